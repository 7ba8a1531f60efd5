{{/* Names ------------------------------------------------------------------------ */}}

{{- define "bgmock-twin.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "bgmock-twin.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "bgmock-twin.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels ----------------------------------------------------------------------- */}}

{{- define "bgmock-twin.selectorLabels" -}}
app.kubernetes.io/name: {{ include "bgmock-twin.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "bgmock-twin.labels" -}}
helm.sh/chart: {{ include "bgmock-twin.chart" . }}
{{ include "bgmock-twin.selectorLabels" . }}
app.kubernetes.io/version: {{ include "bgmock-twin.imageTag" . | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: bgmock
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Derived names ---------------------------------------------------------------- */}}

{{- define "bgmock-twin.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "bgmock-twin.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The Secret the pod reads its token and database URLs from. */}}
{{- define "bgmock-twin.secretName" -}}
{{- default (include "bgmock-twin.fullname" .) .Values.existingSecret }}
{{- end }}

{{- define "bgmock-twin.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{- define "bgmock-twin.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "bgmock-twin.imageTag" .) }}
{{- end }}
{{- end }}

{{/* The claim holding /data, or "" for an emptyDir. */}}
{{- define "bgmock-twin.claimName" -}}
{{- if .Values.persistence.enabled }}
{{- default (printf "%s-data" (include "bgmock-twin.fullname" .)) .Values.persistence.existingClaim }}
{{- end }}
{{- end }}

{{/* Environment values ------------------------------------------------------------
Helm turns every number in values into a float64, which prints 1000000 as "1e+06";
settings such as TWIN_RETENTION_MAX_PAYMENTS must reach the daemon as "1000000".
Whole numbers print as integers, lists join with commas (TWIN_LAG_GROUPS). */}}
{{- define "bgmock-twin.envValue" -}}
{{- if kindIs "float64" . }}
{{- if eq . (float64 (int64 .)) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if kindIs "slice" . }}
{{- join "," . }}
{{- else }}
{{- . }}
{{- end }}
{{- end }}

{{/* BGMock's databases are read only outside embedded mode: there a DB_* would
replace the emulator's own database. */}}
{{- define "bgmock-twin.readsBgmockDatabases" -}}
{{- if and .Values.bgmock.databases.enabled (ne .Values.mode "embedded") }}true{{ end }}
{{- end }}

{{/* Databases of the real BGMock whose URL is composed from host, user and the
password in BGMock's own Secret (url empty, passwordSecret named). */}}
{{- define "bgmock-twin.composedDatabases" -}}
{{- $result := dict }}
{{- if include "bgmock-twin.readsBgmockDatabases" . }}
{{- range $key, $env := dict "bankA" "DB_BANK_A" "bankB" "DB_BANK_B" "clearing" "DB_SWITCH" }}
{{- $db := index $.Values.bgmock.databases $key }}
{{- if and (not $db.url) $db.passwordSecret.name }}
{{- $_ := set $result $env $db }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $result }}
{{- end }}
