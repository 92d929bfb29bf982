#!/usr/bin/env bash
# Peer to measure ocs against: FreeRADIUS 3.2 (Debian) as a "simple prepaid" AAA
# server over Redis. Access-Request: no password check; authorize reads the
# account's balance from Redis (HGET), counts a line (HINCRBY), refuses at zero
# balance, and returns Session-Timeout = balance / a flat per-second price. No
# prefix rating, no reservation. See README.md beside this file.
# Usage: freeradius_redis_peer.sh start|stop
#   auth port 18120, secret testing123, users u1..u1000, its own Redis on 127.0.0.1:6390
set -eu
D=/tmp/fr-peer-redis
case "${1:-start}" in
stop)
	if [ -f $D/pid ]; then
		pid=$(cat $D/pid)
		kill "$pid" 2>/dev/null || true
		# Wait until it is gone, so that a start right after can bind the port again.
		for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		rm -f $D/pid
	fi
	redis-cli -p 6390 shutdown nosave >/dev/null 2>&1 || true
	exit 0;;
start) ;;
*) echo "usage: $0 start|stop" >&2; exit 2;;
esac
[ -d /etc/freeradius/3.0 ] || { echo "FreeRADIUS 3 is not installed (see README.md)" >&2; exit 1; }
rm -rf $D && cp -a /etc/freeradius/3.0 $D
redis-server --port 6390 --daemonize yes --save "" --appendonly no >/dev/null
for _ in $(seq 1 50); do redis-cli -p 6390 ping >/dev/null 2>&1 && break; sleep 0.1; done
for i in $(seq 1 1000); do echo "HSET acct:u$i bal 1000000 lines 0 maxlines 1000"; done | redis-cli -p 6390 >/dev/null
cat > $D/mods-enabled/redis <<'R'
redis {
	server = 127.0.0.1
	port = 6390
	pool {
		start = 8
		min = 8
		max = 64
		spare = 8
		uses = 0
		lifetime = 0
		idle_timeout = 60
	}
}
R
cat > $D/sites-enabled/default <<'S'
server default {
listen {
	type = auth
	ipaddr = 127.0.0.1
	port = 18120
}
authorize {
	update control {
		&Tmp-Integer-0 := "%{redis:HGET acct:%{User-Name} bal}"
		&Tmp-Integer-1 := "%{redis:HINCRBY acct:%{User-Name} lines 1}"
	}
	if (&control:Tmp-Integer-0 <= 0) {
		reject
	}
	update reply {
		&Session-Timeout := "%{expr:%{control:Tmp-Integer-0} / 100}"
	}
	update control {
		&Auth-Type := Accept
	}
}
authenticate {
}
post-auth {
}
}
S
rm -f $D/sites-enabled/inner-tunnel $D/mods-enabled/eap
cat > $D/clients.conf <<'C'
client lo {
	ipaddr = 127.0.0.1
	secret = testing123
}
C
# Trim the thread pool to a small machine.
sed -i 's/^\(\s*max_servers\s*=\s*\).*/\132/; s/^\(\s*start_servers\s*=\s*\).*/\116/' $D/radiusd.conf
# Its own output goes to a file: a caller that reads this script's output is not held open.
freeradius -f -d $D -l $D/radius.log </dev/null >$D/stdout.log 2>&1 &
echo $! > $D/pid
# Poll with Status-Server (it needs a Message-Authenticator) until it answers.
for _ in $(seq 1 50); do echo "Message-Authenticator = 0x00" | radclient -q -r 1 -t 1 127.0.0.1:18120 status testing123 >/dev/null 2>&1 && break; sleep 0.2; done
out=$(echo "User-Name = u1, Called-Station-Id = 442071234567" | radclient -x -r 3 -t 2 127.0.0.1:18120 auth testing123 2>&1 || true)
echo "$out" | head -5
grep -q "Received Access-Accept" <<<"$out" || { echo "the FreeRADIUS+Redis peer did not answer: see $D/radius.log" >&2; exit 1; }
