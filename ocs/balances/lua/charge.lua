-- charge: rate-and-debit a usage event (MB, kWh, messages) at once, once per event id.
--
-- KEYS[1] account hash          acct:{b:N}:<account>
-- KEYS[2] event result key      usage:{b:N}:<account>:<event id>
-- KEYS[3] ledger stream         ledger:{b:N}
-- KEYS[4] earlier result key    stopped:{b:N}:<account>:<event id> (lib.lua's legacy_key)
-- ARGV[1] event id              ARGV[2] cost (micro-units, from the shared rating function)
-- ARGV[3] seconds to keep the result for a repeated event
-- ARGV[4] CDR (msgpack, opaque)  ARGV[5] time (epoch milliseconds)
-- ARGV[6] quantity               ARGV[7] account id
-- ARGV[8] service                ARGV[9] billed quantity
-- ARGV[10] currency              ARGV[11] zone
--
-- Returns {"OK", result} or {"DONE", result} (a repeat: nothing charged), result =
-- msgpack {charged, rated, balance, duration, entry, cause, service, billed, currency,
-- zone} (ARGV[8..11]: what it was charged as, to answer a retry with); {"REJ", reason}
-- when the account is unknown, not active, expired, or cannot pay it (balance never
-- below -credit_limit). The rule itself is lib.lua's charge_event, shared with
-- charge_batch.lua; a live event takes place now (ARGV[5]). It is new usage, so an
-- account that is not active refuses it whatever the reason, a critical-balance lock
-- too (as authorize.lua refuses a new call); an imported record is judged otherwise.

local status, value = charge_event(KEYS[1], KEYS[2], KEYS[4], KEYS[3], ARGV[1], ARGV[2],
  ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[5], nil, nil,
  {service = ARGV[8], billed = tonumber(ARGV[9]), currency = ARGV[10], zone = ARGV[11]})
return {status, value}
