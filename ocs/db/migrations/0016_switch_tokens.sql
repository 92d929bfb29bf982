-- A `switch` role for HTTP switches and IVRs (ocs.api_tokens), used where the
-- switch_token_required setting asks the call lifecycle for a token.
ALTER TABLE api_tokens DROP CONSTRAINT api_tokens_role_check;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_role_check
    CHECK (role IN ('admin', 'operator', 'viewer', 'switch'));
