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

{{/* The headless Service that governs the StatefulSet (its serviceName): it gives
each replica a stable DNS name, <pod>.<this>.<namespace>.svc. */}}
{{- define "bgmock-twin.headlessServiceName" -}}
{{- /* At most 52 + 9 characters: checkValues caps the full name at 52. */}}
{{- printf "%s-headless" (include "bgmock-twin.fullname" .) }}
{{- end }}

{{/* Whether ledger.url names PostgreSQL, the ledger several replicas can share. */}}
{{- define "bgmock-twin.ledgerIsPostgres" -}}
{{- if regexMatch "^(postgresql|postgres|postgresql\\+psycopg2)://" (.Values.ledger.url | default "") }}true{{ end }}
{{- end }}

{{/* Refusals: values that would render but run wrong. Included by statefulset.yaml. */}}
{{- define "bgmock-twin.checkValues" -}}
{{- $fullname := include "bgmock-twin.fullname" . }}
{{- $replicas := int .Values.replicaCount }}
{{- $grace := .Values.config.TWIN_SHUTDOWN_GRACE_SECONDS | default 8 }}
{{- if le (int .Values.terminationGracePeriodSeconds) (int (ceil $grace)) }}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed config.TWIN_SHUTDOWN_GRACE_SECONDS (%v) so the daemon can drain" .Values.terminationGracePeriodSeconds $grace) }}
{{- end }}
{{- /* The StatefulSet controller labels each pod with controller-revision-hash
<name>-<10-character hash>, a label value of at most 63 characters. */}}
{{- if gt (len $fullname) 52 }}
{{- fail (printf "the release's full name %q has %d characters; a StatefulSet's name may have at most 52: shorten the release name or set fullnameOverride" $fullname (len $fullname)) }}
{{- end }}
{{- if and .Values.existingSecret .Values.ledger.url }}
{{- fail "ledger.url is not used with existingSecret (the chart's Secret, which would carry it, is not rendered): put the URL into your Secret under TWIN_DATABASE_URL and set ledger.inExistingSecret=true" }}
{{- end }}
{{- if and .Values.ledger.inExistingSecret (not .Values.existingSecret) }}
{{- fail "ledger.inExistingSecret=true needs existingSecret: the name of the Secret holding TWIN_DATABASE_URL" }}
{{- end }}
{{- if gt $replicas 1 }}
{{- if not (or (include "bgmock-twin.ledgerIsPostgres" .) .Values.ledger.inExistingSecret) }}
{{- $found := "ledger.url is empty (SQLite at /data/twin.db)" }}
{{- if .Values.ledger.url }}
{{- $found = printf "ledger.url has the scheme %q, not PostgreSQL" (regexReplaceAll "://.*$" .Values.ledger.url "") }}
{{- end }}
{{- fail (printf "replicaCount=%d needs a shared ledger, but %s: with SQLite every replica keeps a ledger of its own, persistence or not, so the replicas cannot share payments, books or simulations. Set ledger.url to a PostgreSQL URL (postgresql://, postgres:// or postgresql+psycopg2://user:password@host:5432/db), or keep that URL under TWIN_DATABASE_URL in existingSecret and set ledger.inExistingSecret=true; or set replicaCount=1." $replicas $found) }}
{{- end }}
{{- if and .Values.persistence.enabled .Values.persistence.existingClaim }}
{{- fail (printf "replicaCount=%d with persistence.existingClaim: one claim cannot be every replica's /data; leave existingClaim empty and each replica gets its own claim (volumeClaimTemplates)" $replicas) }}
{{- end }}
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
