-- set_aside: keep a ledger entry PostgreSQL refused (or no one could read) in the
-- bucket's dead-letter stream, and acknowledge and delete it from the ledger stream, in
-- one step and once per entry: two writers that both hold it (one claimed it from the
-- other while that one was still inserting row by row) set it aside once between them.
--
-- KEYS[1] ledger stream        ledger:{b:N}
-- KEYS[2] dead-letter stream   ledger-dead:{b:N}
-- ARGV[1] the ledger's consumer group
-- ARGV[2] the entry's id in the ledger stream
-- ARGV[3..] the dead letter's fields and values, flat
--
-- Returns 1 when the entry was set aside now; 0 when the ledger stream no longer held it
-- (set aside or written by another writer already): only acknowledged then.

if #redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2]) == 0 then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  return 0
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
