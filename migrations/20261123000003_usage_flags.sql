-- Guardrail flags on a usage row (e.g. "anomaly:prompt_tokens,dlp:redacted").
ALTER TABLE usage ADD COLUMN flags TEXT;
