-- Change notifications for the fanout-processor's subscription cache. Any change to tenants,
-- endpoints or subscriptions, by any writer, notifies channel 'harborhook_config.<schema>'
-- with the tenant id, so every fanout replica reloads that tenant within milliseconds. The
-- schema is part of the channel name because channels are per database, and several
-- installations (or tests) may share one database in different schemas.

CREATE FUNCTION harborhook_notify_config() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    tenant uuid;
BEGIN
    IF TG_TABLE_NAME = 'tenants' THEN
        tenant := COALESCE(NEW.id, OLD.id);
    ELSIF TG_OP = 'DELETE' THEN
        tenant := OLD.tenant_id;
    ELSE
        tenant := NEW.tenant_id;
    END IF;
    PERFORM pg_notify('harborhook_config.' || current_schema(), tenant::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER tenants_notify AFTER INSERT OR UPDATE OR DELETE ON tenants
    FOR EACH ROW EXECUTE FUNCTION harborhook_notify_config();
CREATE TRIGGER endpoints_notify AFTER INSERT OR UPDATE OR DELETE ON endpoints
    FOR EACH ROW EXECUTE FUNCTION harborhook_notify_config();
CREATE TRIGGER subscriptions_notify AFTER INSERT OR UPDATE OR DELETE ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION harborhook_notify_config();
