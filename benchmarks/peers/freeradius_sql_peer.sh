#!/usr/bin/env bash
# Peer to measure ocs against: FreeRADIUS 3.2 (Debian) classic prepaid: rlm_sql on
# PostgreSQL + rlm_sqlcounter "noresetcounter" (Max-All-Session minus
# SUM(AcctSessionTime) from radacct) replying Session-Timeout, PAP on the
# password. Needs freeradius-postgresql and a local PostgreSQL on 127.0.0.1:5432
# where the user postgres may log in without a password; it (re)creates the
# database named by FR_PEER_SQL_DB (default radius). See README.md beside this file.
# Usage: freeradius_sql_peer.sh start|stop   (auth port 18121, secret testing123, users u1..u1000 / pw)
set -eu
D=/tmp/fr-peer-sql
DB=${FR_PEER_SQL_DB:-radius}
case "${1:-start}" in
stop)
	if [ -f $D/pid ]; then
		pid=$(cat $D/pid)
		kill "$pid" 2>/dev/null || true
		# Wait until it is gone, so that a start right after can bind the port again.
		for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		rm -f $D/pid
	fi
	exit 0;;
start) ;;
*) echo "usage: $0 start|stop" >&2; exit 2;;
esac
[ -d /etc/freeradius/3.0 ] || { echo "FreeRADIUS 3 is not installed (see README.md)" >&2; exit 1; }
rm -rf $D && cp -a /etc/freeradius/3.0 $D
rm -f $D/sites-enabled/inner-tunnel $D/mods-enabled/eap
psql -U postgres -h 127.0.0.1 -qc "DROP DATABASE IF EXISTS \"$DB\"" >/dev/null
psql -U postgres -h 127.0.0.1 -qc "CREATE DATABASE \"$DB\"" >/dev/null
psql -U postgres -h 127.0.0.1 -q -d "$DB" -f $D/mods-config/sql/main/postgresql/schema.sql >/dev/null
psql -U postgres -h 127.0.0.1 -q -d "$DB" <<'SQL' >/dev/null
INSERT INTO radcheck (username, attribute, op, value)
  SELECT 'u'||g, 'Max-All-Session', ':=', '360000' FROM generate_series(1,1000) g;
INSERT INTO radcheck (username, attribute, op, value)
  SELECT 'u'||g, 'Cleartext-Password', ':=', 'pw' FROM generate_series(1,1000) g;
INSERT INTO radacct (acctsessionid, acctuniqueid, username, nasipaddress, acctstarttime, acctsessiontime)
  SELECT 's'||g, 'q'||g, 'u'||(g%1000+1), '127.0.0.1', now(), 60 FROM generate_series(1,100000) g;
ANALYZE;
SQL
sed -i 's/^\(\s*\)dialect = "sqlite"/\1dialect = "postgresql"/; s/^\(\s*\)driver = "rlm_sql_null"/\1driver = "rlm_sql_${dialect}"/' $D/mods-available/sql
sed -i 's/^#\?\s*server = "localhost"/\tserver = "127.0.0.1"/; s/^#\?\s*login = "radius"/\tlogin = "postgres"/; s/^#\?\s*password = "radpass"/\tpassword = ""/' $D/mods-available/sql
sed -i "s/^\(\s*\)radius_db = \"radius\"/\1radius_db = \"$DB\"/" $D/mods-available/sql
ln -sf ../mods-available/sql $D/mods-enabled/sql
ln -sf ../mods-available/sqlcounter $D/mods-enabled/sqlcounter
cat > $D/sites-enabled/default <<'S'
server default {
listen {
	type = auth
	ipaddr = 127.0.0.1
	port = 18121
}
authorize {
	sql
	noresetcounter
	pap
}
authenticate {
	Auth-Type PAP {
		pap
	}
}
post-auth {
}
}
S
cat > $D/clients.conf <<'C'
client lo {
	ipaddr = 127.0.0.1
	secret = testing123
}
C
# Its own output goes to a file: a caller that reads this script's output is not held open.
freeradius -f -d $D -l $D/radius.log </dev/null >$D/stdout.log 2>&1 &
echo $! > $D/pid
# Poll with Status-Server (it needs a Message-Authenticator) until it answers.
for _ in $(seq 1 50); do echo "Message-Authenticator = 0x00" | radclient -q -r 1 -t 1 127.0.0.1:18121 status testing123 >/dev/null 2>&1 && break; sleep 0.2; done
out=$(echo 'User-Name = u1, User-Password = pw, Called-Station-Id = 442071234567' | radclient -x -r 3 -t 2 127.0.0.1:18121 auth testing123 2>&1 || true)
echo "$out" | tail -3
grep -q "Received Access-Accept" <<<"$out" || { echo "the FreeRADIUS+SQL peer did not answer: see $D/radius.log" >&2; exit 1; }
