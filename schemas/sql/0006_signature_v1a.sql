-- Standard Webhooks `v1a` (ed25519) signatures, opt in per endpoint.
--
-- The key pair rotates with the HMAC secret: each secret row of an endpoint with
-- signature_v1a holds the seed of its own ed25519 key (`whsk_<base64>`), so a rotation's overlap
-- covers both signatures alike. Adding nullable columns and a defaulted boolean rewrites
-- nothing; the previous release ignores both (it selects its columns by name). Its gateway
-- would rotate a secret without a key, so turn v1a on only once the rollout is complete
-- (docs/database.md); a row left without a key gets one at the next write or key read.
ALTER TABLE endpoints ADD COLUMN signature_v1a boolean NOT NULL DEFAULT false;
ALTER TABLE endpoint_secrets ADD COLUMN signing_key text
    CHECK (signing_key IS NULL OR signing_key ~ '^whsk_[A-Za-z0-9+/]{43}=$');
