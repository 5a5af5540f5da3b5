#!/usr/bin/env python3
"""Writes schemas/openapi.yaml. The document is maintained here as data because most of it is
repetition (tenant path parameter, error responses, pagination); edit this file, run it, and
commit both. ingest-gateway/tests/it/openapi.rs keeps the document and the router in agreement and
validates every example against its schema."""
import yaml, pathlib

ID = lambda p, d: {"type": "string", "pattern": f"^{p}_[0-9a-f]{{32}}$", "description": d}

# The grammar the server enforces (ingest-gateway/src/grammar.rs); tests/it/openapi.rs checks that
# each pattern here is the server's, character for character.
URL_PATTERN = (r"^https?://"
    r"(?:(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"|(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(?:\.(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}"
    r"|\[(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}\]|\[::1\])"
    r"(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?"
    r"(?:[/?#][\x21-\x7e]*)?$")
CURSOR_PATTERN = r"^v1\.-?[0-9]{1,16}\.[0-9a-f]{32}$"
SECRET_PATTERN = (r"^whsec_(?:(?:[A-Za-z0-9+/]{4}){8,20}(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?"
    r"|(?:[A-Za-z0-9+/]{4}){21}(?:[A-Za-z0-9+/][AQgw]==)?)$")
HEADER_VALUE_PATTERN = r"^[^\x00-\x08\x0a-\x1f\x7f]*$"
_WS = r"\t\n\x0b\x0c\r \xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
LINE_PATTERN = (r"^[^\x00-\x1f\x7f-\x9f]*"
    r"[^" + _WS + r"\x00-\x1f\x7f-\x9f]"
    r"[^\x00-\x1f\x7f-\x9f]*$")
PROSE_PATTERN = (r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*"
    r"[^" + _WS + r"\x00-\x1f\x7f-\x9f]"
    r"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$")
OPTIONAL_PROSE_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]*$"
KEY_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"
EVENT_TYPE_PATTERN = r"^[A-Za-z0-9._-]{1,255}$"
# An exact type, `*`, or a type prefix (not ending in `.`) followed by `.*`.
SUBSCRIPTION_PATTERN = r"^(?:\*|[A-Za-z0-9._-]{1,255}|[A-Za-z0-9._-]{0,254}[A-Za-z0-9_-]\.\*)$"
TOKEN_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"

def ci(word):
    """A case-insensitive spelling of `word` without inline flags (ECMA-262 has none)."""
    return "".join(f"[{c.upper()}{c.lower()}]" if c.isalpha() else c for c in word)
RESERVED = ["host", "content-type", "content-length", "transfer-encoding", "connection",
            "traceparent", "tracestate", "user-agent"]
HEADER_NAME = {"pattern": TOKEN_PATTERN, "not": {"anyOf": [{"pattern": f"^{ci(r)}$"} for r in RESERVED]
    + [{"pattern": f"^{ci('webhook-')}"}, {"pattern": f"^{ci('x-harborhook-')}"}]}}
HEADERS = {"type": "object", "maxProperties": 20, "propertyNames": HEADER_NAME,
    "additionalProperties": {"type": "string", "maxLength": 4096, "pattern": HEADER_VALUE_PATTERN},
    "description": "Custom headers sent with every delivery; Harborhook's own cannot be overridden"}
TEXT = lambda pattern, max_len, d=None: {k: v for k, v in {"type": "string", "maxLength": max_len,
    "pattern": pattern, "description": d}.items() if v is not None}
URL = {"type": "string", "maxLength": 2048, "pattern": URL_PATTERN,
    "description": "http(s) URL; ASCII host (xn-- for international names), optional port, printable ASCII path; no credentials"}
SECRET = {"type": "string", "pattern": SECRET_PATTERN, "description": "`whsec_` and base64 of 24 to 64 bytes"}
RANGE = lambda lo, hi: {"type": "integer", "minimum": lo, "maximum": hi}
RATE = {"type": "number", "minimum": 0.001, "maximum": 10000}
TS = {"type": "string", "format": "date-time"}
NULLABLE = lambda s: {"oneOf": [s, {"type": "null"}]}
EX_TEN, EX_EP = "ten_0190c5a1b2c37d4e8f9a0b1c2d3e4f50", "ep_0190c5a1b2c37d4e8f9a0b1c2d3e4f51"
EX_SUB, EX_EVT = "sub_0190c5a1b2c37d4e8f9a0b1c2d3e4f52", "evt_0190c5a1b2c37d4e8f9a0b1c2d3e4f53"
EX_DLV, EX_T = "dlv_a57cba482ff05a2bb78e910604e3469d", "2026-11-28T12:00:00Z"

def ref(name): return {"$ref": f"#/components/schemas/{name}"}
def obj(props, required=(), extra=False, desc=None):
    o = {"type": "object", "properties": props, "required": list(required), "additionalProperties": extra}
    if desc: o["description"] = desc
    return o
def page(item): return obj({"data": {"type": "array", "items": ref(item)}, "next_cursor": NULLABLE({"type": "string"})}, ["data", "next_cursor"])
def body(schema, example): return {"required": True, "content": {"application/json": {"schema": schema, "example": example}}}
def ok(code, desc, schema, example):
    return {code: {"description": desc, "content": {"application/json": {"schema": schema, "example": example}}}}
ERR = lambda *codes: {str(c): {"$ref": f"#/components/responses/E{c}"} for c in codes}
P = lambda name, prefix, desc: {"name": name, "in": "path", "required": True,
    "schema": {"type": "string", "pattern": f"^{prefix}_[0-9a-f]{{32}}$"}, "description": desc}
Q = lambda name, schema, desc: {"name": name, "in": "query", "required": False, "schema": schema, "description": desc}
TEN, EP = P("tenant_id", "ten", "Tenant id (`ten_…`)"), P("endpoint_id", "ep", "Endpoint id (`ep_…`)")
SUB = P("subscription_id", "sub", "Subscription id (`sub_…`)")
EVT, DLV = P("event_id", "evt", "Event id (`evt_…`)"), P("delivery_id", "dlv", "Delivery id (`dlv_…`), the `webhook-id`")
PAGE = [Q("limit", {"type": "integer", "minimum": 1, "maximum": 250, "default": 50}, "Page size"),
        Q("cursor", {"type": "string", "pattern": CURSOR_PATTERN}, "`next_cursor` of the previous page")]
TIME = {"type": "string", "format": "date-time", "description": "RFC 3339, years 1 to 9999"}
AUTH_ERR = (401, 404, 429)
LIST_ERR = (400, 401, 404, 422, 429)

endpoint_ex = {"id": EX_EP, "tenant_id": EX_TEN, "url": "https://example.com/webhooks", "description": "billing",
    "signature_scheme": "standard_webhooks", "signature_v1a": False, "enabled": True, "disabled_reason": None, "max_in_flight": 10,
    "rate_limit_per_sec": None, "connect_timeout_ms": 5000, "timeout_ms": 15000, "headers": {"x-team": "billing"},
    "created_at": EX_T, "updated_at": EX_T}
sub_ex = {"id": EX_SUB, "tenant_id": EX_TEN, "endpoint_id": EX_EP, "event_type": "invoice.*", "created_at": EX_T}
event_ex = {"id": EX_EVT, "tenant_id": EX_TEN, "event_type": "invoice.paid", "payload": {"invoice": "in_1", "amount": 4200},
    "idempotency_key": "order-1234", "ordering_key": None, "created_at": EX_T}
delivery_ex = {"id": EX_DLV, "tenant_id": EX_TEN, "event_id": EX_EVT, "endpoint_id": EX_EP, "event_type": "invoice.paid",
    "status": "delivered", "attempts": 1, "last_status_code": 200, "last_error_class": None, "skip_reason": None,
    "created_at": EX_T, "updated_at": EX_T, "delivered_at": EX_T}
secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw2N3LDRr1Ks4="
public_key = "whpk_11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="
PUBLIC_KEY = {"type": "string", "pattern": "^whpk_[A-Za-z0-9+/]{43}=$", "description": "`whpk_` and base64 of the 32-byte ed25519 public key"}

schemas = {
  "Error": obj({"error": obj({"code": {"type": "string"}, "message": {"type": "string"},
      "details": {"type": "array", "items": {"type": "object"}}}, ["code", "message", "details"])}, ["error"]),
  "Tenant": obj({"id": ID("ten", "Tenant id"), "name": {"type": "string"}, "created_at": TS}, ["id", "name", "created_at"]),
  "Endpoint": obj({"id": ID("ep", "Endpoint id"), "tenant_id": ID("ten", "Tenant id"), "url": URL,
      "description": {"type": "string"}, "signature_scheme": ref("SignatureScheme"),
      "signature_v1a": {"type": "boolean", "description": "Standard Webhooks `v1a` (ed25519) signatures beside `v1`; verify with `GET …/public-key`"},
      "enabled": {"type": "boolean"},
      "disabled_reason": NULLABLE({"type": "string"}), "max_in_flight": {"type": "integer", "minimum": 1, "maximum": 1000},
      "rate_limit_per_sec": NULLABLE({"type": "number"}), "connect_timeout_ms": {"type": "integer"}, "timeout_ms": {"type": "integer"},
      "headers": {"type": "object", "additionalProperties": {"type": "string"}}, "created_at": TS, "updated_at": TS},
      ["id", "tenant_id", "url", "description", "signature_scheme", "signature_v1a", "enabled", "disabled_reason", "max_in_flight",
       "rate_limit_per_sec", "connect_timeout_ms", "timeout_ms", "headers", "created_at", "updated_at"], extra=True),
  "SignatureScheme": {"enum": ["standard_webhooks", "harborhook_legacy"],
      "description": "`standard_webhooks` (webhook-id/-timestamp/-signature) or the replaced system's X-HarborHook-* headers"},
  "EndpointWithSecret": {"allOf": [ref("Endpoint")], "type": "object", "properties": {"secret": {"type": "string"}}, "required": ["secret"]},
  # Optional fields: absent or null mean the default (create) or unchanged (update), except an
  # update's rate_limit_per_sec, where null removes the limit.
  "CreateEndpoint": obj({"url": URL, "description": TEXT(OPTIONAL_PROSE_PATTERN, 1000), "secret": NULLABLE(SECRET),
      "signature_scheme": NULLABLE(ref("SignatureScheme")), "signature_v1a": NULLABLE({"type": "boolean"}),
      "max_in_flight": NULLABLE(RANGE(1, 1000)),
      "rate_limit_per_sec": NULLABLE(RATE), "connect_timeout_ms": NULLABLE(RANGE(100, 60000)),
      "timeout_ms": NULLABLE(RANGE(100, 300000)), "headers": HEADERS}, ["url"]),
  "UpdateEndpoint": obj({"url": NULLABLE(URL), "description": NULLABLE(TEXT(OPTIONAL_PROSE_PATTERN, 1000)),
      "signature_scheme": NULLABLE(ref("SignatureScheme")), "signature_v1a": NULLABLE({"type": "boolean"}),
      "max_in_flight": NULLABLE(RANGE(1, 1000)),
      "rate_limit_per_sec": NULLABLE(RATE), "connect_timeout_ms": NULLABLE(RANGE(100, 60000)),
      "timeout_ms": NULLABLE(RANGE(100, 300000)), "headers": NULLABLE(HEADERS)}),
  "DisableEndpoint": obj({"reason": TEXT(PROSE_PATTERN, 1000, "Why; shown with the endpoint")}, ["reason"]),
  "RotateSecret": obj({"secret": NULLABLE({**SECRET, "description": "A chosen secret; generated when absent"})}),
  "Secret": obj({"secret": {"type": "string"}, "created_at": TS, "previous": {"type": "array", "items": obj(
      {"secret": {"type": "string"}, "created_at": TS, "expires_at": NULLABLE(TS)}, ["secret", "created_at", "expires_at"])}},
      ["secret", "created_at", "previous"]),
  "PublicKey": obj({"public_key": PUBLIC_KEY, "created_at": TS, "previous": {"type": "array", "items": obj(
      {"public_key": PUBLIC_KEY, "created_at": TS, "expires_at": NULLABLE(TS)}, ["public_key", "created_at", "expires_at"])}},
      ["public_key", "created_at", "previous"]),
  "Rotated": obj({"secret": {"type": "string"}, "previous_secret_expires_at": TS}, ["secret", "previous_secret_expires_at"]),
  "Subscription": obj({"id": ID("sub", "Subscription id"), "tenant_id": ID("ten", "Tenant id"), "endpoint_id": ID("ep", "Endpoint id"),
      "event_type": {"type": "string", "description": "Exact type, `prefix.*`, or `*`"}, "created_at": TS},
      ["id", "tenant_id", "endpoint_id", "event_type", "created_at"]),
  "CreateSubscription": obj({"event_type": {"type": "string", "pattern": SUBSCRIPTION_PATTERN,
      "description": "An exact type, `prefix.*` or `*`"}, "endpoint_id": ID("ep", "An endpoint of this tenant")}, ["event_type", "endpoint_id"]),
  "Publish": obj({"event_type": {"type": "string", "pattern": EVENT_TYPE_PATTERN},
      "payload": {"type": "object", "description": "Any JSON object, carried to receivers as sent (nesting at most 64, no repeated key, numbers within double range; size limit: docs/api.md)"},
      "idempotency_key": NULLABLE(TEXT(KEY_PATTERN, 255)), "ordering_key": NULLABLE(TEXT(KEY_PATTERN, 255))},
      ["event_type", "payload"]),
  "Published": obj({"event_id": ID("evt", "Event id"), "duplicate": {"type": "boolean",
      "description": "True when the idempotency key matched an earlier publish"}}, ["event_id", "duplicate"]),
  "Batch": obj({"events": {"type": "array", "minItems": 1, "maxItems": 500, "items": {},
      "description": "Each item a Publish body, validated on its own: a bad item is that item's error in the 207 answer"}}, ["events"]),
  "BatchResult": obj({"results": {"type": "array", "items": obj({"index": {"type": "integer"}, "status": {"type": "integer"},
      "event_id": ID("evt", "Event id"), "duplicate": {"type": "boolean"}, "error": {"type": "object"}}, ["index", "status"])}}, ["results"]),
  "Event": obj({"id": ID("evt", "Event id"), "tenant_id": ID("ten", "Tenant id"), "event_type": {"type": "string"}, "payload": {"type": "object"},
      "idempotency_key": NULLABLE({"type": "string"}), "ordering_key": NULLABLE({"type": "string"}), "created_at": TS},
      ["id", "tenant_id", "event_type", "payload", "idempotency_key", "ordering_key", "created_at"], extra=True),
  "EventWithDeliveries": {"allOf": [ref("Event")], "type": "object", "properties": {"deliveries": {"type": "array", "items": ref("Delivery")}},
      "required": ["deliveries"]},
  "Delivery": obj({"id": ID("dlv", "Delivery id"), "tenant_id": ID("ten", "Tenant id"), "event_id": ID("evt", "Event id"),
      "endpoint_id": ID("ep", "Endpoint id"), "event_type": {"type": "string"},
      "status": {"enum": ["pending", "delivered", "retrying", "dead_lettered", "skipped"]}, "attempts": {"type": "integer"},
      "last_status_code": NULLABLE({"type": "integer"}), "last_error_class": NULLABLE({"type": "string"}), "skip_reason": NULLABLE({"type": "string"}),
      "created_at": TS, "updated_at": TS, "delivered_at": NULLABLE(TS)},
      ["id", "tenant_id", "event_id", "endpoint_id", "event_type", "status", "attempts", "last_status_code", "last_error_class",
       "skip_reason", "created_at", "updated_at", "delivered_at"]),
  "Attempts": obj({"data": {"type": "array", "items": obj({"attempt": {"type": "integer"}, "started_at": TS, "duration_ms": {"type": "integer"},
      "status_code": NULLABLE({"type": "integer"}), "error_class": NULLABLE({"type": "string"}), "error": NULLABLE({"type": "string"}),
      "response_excerpt": NULLABLE({"type": "string"})}, ["attempt", "started_at", "duration_ms"])}}, ["data"]),
  "Replay": obj({"reason": TEXT(PROSE_PATTERN, 1000, "Why; recorded with the replay")}, ["reason"]),
  "Replayed": obj({"delivery_id": ID("dlv", "Delivery id"), "replay_id": {"type": "string"}}, ["delivery_id", "replay_id"]),
  "CreateTenant": obj({"name": TEXT(LINE_PATTERN, 200), "id": NULLABLE(ID("ten", "Optional chosen id"))}, ["name"]),
}
for name in ["Endpoint", "Subscription", "Event", "Delivery"]:
    schemas[name + "Page"] = page(name)

err_desc = {400: "Malformed request (bad JSON, unknown field, wrong type)", 401: "Missing, invalid or expired token",
    403: "Needs the operator scope", 404: "Unknown id, or another tenant's", 409: "Conflict",
    413: "Body larger than the limit", 415: "Content-Type is not application/json", 422: "Validation failed",
    429: "Rate limited; see Retry-After", 503: "A dependency is unavailable; retry after Retry-After"}
responses = {f"E{c}": {"description": d, "content": {"application/json": {"schema": ref("Error"),
    "example": {"error": {"code": "example", "message": d, "details": []}}}}} for c, d in err_desc.items()}

def op(summary, params, resp, req=None, errs=AUTH_ERR, desc=None, security=True):
    o = {"summary": summary, "parameters": params, "responses": {**resp, **ERR(*errs)}}
    if req: o["requestBody"] = req
    if desc: o["description"] = desc
    if not security: o["security"] = []
    return o

paths = {
 "/v1/ping": {"get": op("Liveness of the API", [], ok("200", "pong", obj({"status": {"const": "ok"}}, ["status"]), {"status": "ok"}), errs=(), security=False)},
 "/v1/tenants": {"post": op("Create a tenant (operator)", [], ok("201", "Created", ref("Tenant"), {"id": EX_TEN, "name": "acme", "created_at": EX_T}),
     body(ref("CreateTenant"), {"name": "acme"}), errs=(400, 401, 403, 409, 415, 422, 429))},
 "/v1/tenants/{tenant_id}": {"get": op("Get a tenant", [TEN], ok("200", "The tenant", ref("Tenant"), {"id": EX_TEN, "name": "acme", "created_at": EX_T}))},
 "/v1/tenants/{tenant_id}/endpoints": {
   "post": op("Create an endpoint", [TEN], ok("201", "Created; the only response besides rotation and /secret that shows the secret",
       ref("EndpointWithSecret"), {**endpoint_ex, "secret": secret}),
       body(ref("CreateEndpoint"), {"url": "https://example.com/webhooks", "description": "billing", "headers": {"x-team": "billing"}}),
       errs=(400, 401, 404, 413, 415, 422, 429)),
   "get": op("List endpoints", [TEN, *PAGE, Q("enabled", {"type": "boolean"}, "Only enabled or disabled endpoints")],
       ok("200", "A page", ref("EndpointPage"), {"data": [endpoint_ex], "next_cursor": None}), errs=LIST_ERR)},
 "/v1/tenants/{tenant_id}/endpoints/{endpoint_id}": {
   "get": op("Get an endpoint", [TEN, EP], ok("200", "The endpoint", ref("Endpoint"), endpoint_ex)),
   "patch": op("Update an endpoint", [TEN, EP], ok("200", "Updated", ref("Endpoint"), endpoint_ex),
       body(ref("UpdateEndpoint"), {"timeout_ms": 10000, "rate_limit_per_sec": None}), errs=(400, 401, 404, 413, 415, 422, 429)),
   "delete": op("Delete an endpoint and its subscriptions", [TEN, EP], {"204": {"description": "Deleted"}})},
 "/v1/tenants/{tenant_id}/endpoints/{endpoint_id}:enable": {"post": op("Enable an endpoint", [TEN, EP], ok("200", "Enabled", ref("Endpoint"), endpoint_ex))},
 "/v1/tenants/{tenant_id}/endpoints/{endpoint_id}:disable": {"post": op("Disable an endpoint", [TEN, EP],
     ok("200", "Disabled", ref("Endpoint"), {**endpoint_ex, "enabled": False, "disabled_reason": "maintenance"}),
     body(ref("DisableEndpoint"), {"reason": "maintenance"}), errs=(400, 401, 404, 415, 422, 429))},
 "/v1/tenants/{tenant_id}/endpoints/{endpoint_id}:rotate-secret": {"post": op("Rotate the signing secret", [TEN, EP],
     ok("200", "The new secret; the old one keeps signing until previous_secret_expires_at", ref("Rotated"),
        {"secret": secret, "previous_secret_expires_at": EX_T}),
     {**body(ref("RotateSecret"), {"secret": secret}), "required": False}, errs=(400, 401, 404, 415, 422, 429),
     desc="The previous secret signs beside the new one for `gateway.secret_rotation_overlap` (24 h by default); both signatures are sent.")},
 "/v1/tenants/{tenant_id}/endpoints/{endpoint_id}/secret": {"get": op("Read the signing secrets", [TEN, EP],
     ok("200", "Current and overlapping secrets", ref("Secret"), {"secret": secret, "created_at": EX_T, "previous": []}))},
 "/v1/tenants/{tenant_id}/endpoints/{endpoint_id}/public-key": {"get": op("Read the v1a public keys", [TEN, EP],
     ok("200", "Current and overlapping public keys", ref("PublicKey"), {"public_key": public_key, "created_at": EX_T, "previous": []}),
     desc="The ed25519 keys that verify the endpoint's `v1a` signatures; 404 unless `signature_v1a` is on. They rotate with the secret (`:rotate-secret`).")},
 "/v1/tenants/{tenant_id}/subscriptions": {
   "post": op("Subscribe an endpoint to an event type or pattern", [TEN], ok("201", "Created", ref("Subscription"), sub_ex),
       body(ref("CreateSubscription"), {"event_type": "invoice.*", "endpoint_id": EX_EP}), errs=(400, 401, 404, 409, 413, 415, 422, 429)),
   "get": op("List subscriptions", [TEN, *PAGE, Q("endpoint_id", ID("ep", "Endpoint id"), "Only this endpoint's")],
       ok("200", "A page", ref("SubscriptionPage"), {"data": [sub_ex], "next_cursor": None}), errs=(400, 401, 404, 422, 429))},
 "/v1/tenants/{tenant_id}/subscriptions/{subscription_id}": {
   "get": op("Get a subscription", [TEN, SUB], ok("200", "The subscription", ref("Subscription"), sub_ex)),
   "delete": op("Delete a subscription", [TEN, SUB], {"204": {"description": "Deleted"}})},
 # The Idempotency-Key header (docs/api.md) is left out: it must equal the body's key when both
 # are given, a constraint between two parameters the document cannot state; the body field
 # says everything the header does.
 "/v1/tenants/{tenant_id}/events:publish": {"post": op("Publish an event", [TEN],
     ok("202", "Acknowledged by the broker", ref("Published"), {"event_id": EX_EVT, "duplicate": False}),
     body(ref("Publish"), {"event_type": "invoice.paid", "payload": {"invoice": "in_1", "amount": 4200}, "idempotency_key": "order-1234"}),
     errs=(400, 401, 404, 409, 413, 415, 422, 429, 503),
     desc="Answers 202 only after the broker acknowledged the event. The same idempotency key within the window returns the same event_id and publishes nothing new.")},
 "/v1/tenants/{tenant_id}/events:batch": {"post": op("Publish up to 500 events", [TEN],
     {**ok("202", "Every event accepted", ref("BatchResult"), {"results": [{"index": 0, "status": 202, "event_id": EX_EVT, "duplicate": False}]}),
      **ok("207", "Some events failed; see each result", ref("BatchResult"),
           {"results": [{"index": 0, "status": 422, "error": {"code": "validation_failed", "message": "event_type: ..."}}]})},
     body(ref("Batch"), {"events": [{"event_type": "invoice.paid", "payload": {"invoice": "in_1"}}]}),
     errs=(400, 401, 404, 413, 415, 422, 429))},
 "/v1/tenants/{tenant_id}/events": {"get": op("List events", [TEN, *PAGE, Q("type", {"type": "string", "pattern": EVENT_TYPE_PATTERN}, "Exact event type"),
     Q("from", TIME, "Created at or after"), Q("to", TIME, "Created before")],
     ok("200", "A page", ref("EventPage"), {"data": [event_ex], "next_cursor": None}), errs=LIST_ERR)},
 "/v1/events/{event_id}": {"get": op("Get an event with its deliveries", [EVT], ok("200", "The event", ref("EventWithDeliveries"),
     {**event_ex, "deliveries": [delivery_ex]}), errs=(*AUTH_ERR, 409),
     desc="Event ids are per tenant: an operator asking by an id more than one tenant uses gets 409 (list the tenant's events instead).")},
 "/v1/events/{event_id}/deliveries": {"get": op("List an event's deliveries", [EVT, Q("endpoint_id", ID("ep", "Endpoint id"), "Only this endpoint's"),
     Q("from", TIME, "Created at or after"), Q("to", TIME, "Created before"), *PAGE],
     ok("200", "A page", ref("DeliveryPage"), {"data": [delivery_ex], "next_cursor": None}), errs=(400, 401, 404, 409, 422, 429))},
 "/v1/deliveries/{delivery_id}": {"get": op("Get a delivery", [DLV], ok("200", "The delivery", ref("Delivery"), delivery_ex))},
 "/v1/deliveries/{delivery_id}/attempts": {"get": op("List a delivery's attempts", [DLV], ok("200", "Attempts, oldest first", ref("Attempts"),
     {"data": [{"attempt": 1, "started_at": EX_T, "duration_ms": 87, "status_code": 200, "error_class": None, "error": None, "response_excerpt": "ok"}]}))},
 "/v1/deliveries/{delivery_id}:replay": {"post": op("Replay a delivery", [DLV], ok("202", "Re-enqueued with the same delivery id", ref("Replayed"),
     {"delivery_id": EX_DLV, "replay_id": "0190c5a1-b2c3-7d4e-8f9a-0b1c2d3e4f60"}), body(ref("Replay"), {"reason": "endpoint fixed"}),
     errs=(400, 401, 404, 409, 415, 422, 429, 503))},
 "/v1/dlq": {"get": op("List dead-lettered deliveries", [Q("endpoint_id", ID("ep", "Endpoint id"), "Only this endpoint's"),
     Q("tenant_id", ID("ten", "Tenant id"), "Operators: only this tenant's"), *PAGE],
     ok("200", "A page (the caller's tenant, or every tenant for an operator token)", ref("DeliveryPage"),
        {"data": [{**delivery_ex, "status": "dead_lettered", "attempts": 7, "last_status_code": 500, "last_error_class": "http5xx", "delivered_at": None}],
         "next_cursor": None}), errs=(400, 401, 404, 422, 429))},
}
doc = {"openapi": "3.1.0",
  "info": {"title": "Harborhook API", "version": "1.0.0",
    "description": "Tenant API of Harborhook, the webhook delivery platform. Every route but /v1/ping needs a bearer JWT bound to a tenant (claim tenant_id) or carrying the scope harborhook:operator. Another tenant's resources answer 404. Errors have the body {\"error\": {\"code\", \"message\", \"details\"}}."},
  "servers": [{"url": "http://127.0.0.1:8080"}],
  "security": [{"bearer": []}],
  "paths": paths,
  "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
    "schemas": schemas, "responses": responses}}
out = pathlib.Path(__file__).resolve().parents[2] / "schemas" / "openapi.yaml"
out.write_text("# Generated by scripts/gen/openapi.py; edit that file and run it.\n" + yaml.safe_dump(doc, sort_keys=False, width=110))
print(f"wrote {out}")
