"""The BGMock contract, as the real services define it (``shared/bgmock-contract.md``).

Pure and I/O-free, shared by the twin, its clients and the emulator so both sides
speak one dialect:
- ``wire``: the four topics, the event shapes and their JSON (decode and encode);
- ``wire_fast``: ``decode_event``, the common events read in one msgspec pass, the
  rest by ``wire``'s exact reader;
- ``tables``: the tables the real services create (the emulator makes them, the
  books read them);
- ``topology``: one ``Bank``, one ``Service`` and one ``Channel``.
"""

from bgmock_twin.contract.topology import (
    BANK_A,
    BANK_B,
    BANKS,
    CLEARING,
    SERVICES,
    Bank,
    Channel,
    Service,
    bank_by_clearing,
    bank_by_letter,
    service_by_database,
    service_by_name,
)
from bgmock_twin.contract.wire import (
    CENT,
    PARTITIONS,
    TOPIC_COMPLETED,
    TOPIC_FORWARDED,
    TOPIC_INITIATED,
    TOPIC_PROCESSED,
    TOPICS,
    TYPE_ID_HEADER,
    TYPE_INCOMING,
    TYPE_OUTGOING,
    TYPE_RESPONSE,
    Event,
    IncomingTransactionEvent,
    InvalidEvent,
    OutgoingTransactionEvent,
    Status,
    TransactionResponseEvent,
    decode_event_exact,
    dumps_json,
    encode_event,
    event_to_dict,
    format_amount,
    format_local_datetime_array,
    incoming_from_dict,
    loads_json,
    outgoing_from_dict,
    parse_amount,
    parse_local_datetime,
    response_from_dict,
    type_id,
)
from bgmock_twin.contract.wire_fast import decode_event

__all__ = [
    "BANKS", "BANK_A", "BANK_B", "CENT", "CLEARING",
    "PARTITIONS", "SERVICES", "TOPICS",
    "TOPIC_COMPLETED", "TOPIC_FORWARDED", "TOPIC_INITIATED", "TOPIC_PROCESSED",
    "TYPE_ID_HEADER", "TYPE_INCOMING", "TYPE_OUTGOING", "TYPE_RESPONSE", "Bank", "Channel",
    "Event", "IncomingTransactionEvent", "InvalidEvent", "OutgoingTransactionEvent", "Service",
    "Status", "TransactionResponseEvent", "bank_by_clearing", "bank_by_letter",
    "decode_event", "decode_event_exact", "dumps_json", "encode_event", "event_to_dict",
    "format_amount",
    "format_local_datetime_array", "incoming_from_dict", "loads_json", "outgoing_from_dict",
    "parse_amount", "parse_local_datetime", "response_from_dict", "service_by_database",
    "service_by_name", "type_id",
]
