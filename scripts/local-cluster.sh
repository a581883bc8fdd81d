#!/bin/sh
# A local Scopecast cluster to try cluster mode on one machine (README "Cluster mode"):
# 3 nats-server nodes with JetStream and routes, a throwaway PostgreSQL, and 3 broker nodes,
# all on loopback. Everything lives in one temporary folder and stops on Ctrl-C (or when this
# script is killed); nothing is left behind.
#
#   cargo build --release -p scopecast-cli
#   scripts/local-cluster.sh                 # brokers on 127.0.0.1:7071, :7072, :7073
#   SCOPECAST=target/debug/scopecast BASE_PORT=8000 scripts/local-cluster.sh
#
# Needs: nats-server (Debian `nats-server`), PostgreSQL (Debian `postgresql`: initdb, pg_ctl;
# run as root, the PostgreSQL server runs as the `postgres` user).
set -eu

SCOPECAST=${SCOPECAST:-target/release/scopecast}
BASE_PORT=${BASE_PORT:-7070}
[ -x "$SCOPECAST" ] || { echo "no $SCOPECAST: cargo build --release -p scopecast-cli" >&2; exit 1; }
command -v nats-server >/dev/null || { echo "nats-server is needed (apt-get install nats-server)" >&2; exit 1; }
PGBIN=$(pg_config --bindir 2>/dev/null || true)
[ -x "$PGBIN/initdb" ] || PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$PGBIN/initdb" ] || { echo "PostgreSQL is needed (apt-get install postgresql)" >&2; exit 1; }

DIR=$(mktemp -d /tmp/scopecast-cluster.XXXXXX)
chmod 755 "$DIR"
PIDS=""
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
cleanup() {
    trap - EXIT INT TERM
    echo "stopping the local cluster"
    for p in $PIDS; do kill "$p" 2>/dev/null || true; done
    for p in $PIDS; do wait "$p" 2>/dev/null || true; done
    as_pg "$PGBIN/pg_ctl" -D "$DIR/pg/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$DIR"
}
trap cleanup EXIT INT TERM

# NATS: client ports BASE+101..103, route ports BASE+201..203.
ROUTES="nats://127.0.0.1:$((BASE_PORT + 201)),nats://127.0.0.1:$((BASE_PORT + 202)),nats://127.0.0.1:$((BASE_PORT + 203))"
NATS_URL=""
for i in 1 2 3; do
    mkdir -p "$DIR/nats$i"
    nats-server -js -a 127.0.0.1 -p $((BASE_PORT + 100 + i)) -n "n$i" -sd "$DIR/nats$i" \
        --cluster_name scopecast-local --cluster "nats://127.0.0.1:$((BASE_PORT + 200 + i))" \
        --routes "$ROUTES" >"$DIR/nats$i.log" 2>&1 &
    PIDS="$PIDS $!"
    NATS_URL="${NATS_URL:+$NATS_URL,}nats://127.0.0.1:$((BASE_PORT + 100 + i))"
done

# PostgreSQL on BASE+300, trust authentication on loopback only.
mkdir -p "$DIR/pg"
[ "$(id -u)" = 0 ] && chown postgres "$DIR/pg"
as_pg "$PGBIN/initdb" -A trust -U postgres -D "$DIR/pg/data" >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$DIR/pg/data" -l "$DIR/pg/log" -w \
    -o "-p $((BASE_PORT + 300)) -k $DIR/pg -c listen_addresses=127.0.0.1" start >/dev/null
as_pg "$PGBIN/psql" -q -h 127.0.0.1 -p $((BASE_PORT + 300)) -U postgres -c "CREATE DATABASE scopecast" >/dev/null

# The key-encryption key every node shares, and a configured admin credential.
"$SCOPECAST" cluster kek "$DIR/kek" 2>/dev/null
ADMIN_TOKEN="sc_admin_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s\n' "$ADMIN_TOKEN" > "$DIR/admin.token"
# The nodes' shared settings (the admin credential is a setting, not an environment variable:
# SCOPECAST_ADMIN_TOKEN is what the CLI reads).
cat > "$DIR/cluster.toml" <<TOML
admin_token = "$ADMIN_TOKEN"
[oauth]
public_url = "http://127.0.0.1:$((BASE_PORT + 1))"
[cluster]
nats_url = "$NATS_URL"
postgres_url = "postgres://postgres@127.0.0.1:$((BASE_PORT + 300))/scopecast"
key_encryption_key_file = "$DIR/kek"
TOML
chmod 600 "$DIR/admin.token" "$DIR/cluster.toml"

sleep 1
for i in 1 2 3; do
    port=$((BASE_PORT + i))
    SCOPECAST_CLUSTER__NODE_NAME="node$i" \
        "$SCOPECAST" serve --config "$DIR/cluster.toml" --listen "127.0.0.1:$port" \
        --data-dir "$DIR/node$i" >"$DIR/node$i.log" 2>&1 &
    PIDS="$PIDS $!"
done

for i in 1 2 3; do
    port=$((BASE_PORT + i))
    n=0
    until curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
        n=$((n + 1))
        if [ $n -gt 100 ]; then
            echo "node$i did not get ready; its log:" >&2
            cat "$DIR/node$i.log" >&2
            exit 1
        fi
        sleep 0.2
    done
done

cat <<EOF
A local Scopecast cluster is running (folder $DIR; Ctrl-C stops it and removes everything):
  brokers     http://127.0.0.1:$((BASE_PORT + 1))  http://127.0.0.1:$((BASE_PORT + 2))  http://127.0.0.1:$((BASE_PORT + 3))
              (one issuer for all: http://127.0.0.1:$((BASE_PORT + 1)), as behind a load balancer)
  NATS        $NATS_URL
  PostgreSQL  postgres://postgres@127.0.0.1:$((BASE_PORT + 300))/scopecast
  admin token $DIR/admin.token   (settings: $DIR/cluster.toml)
  logs        $DIR/node1.log ... $DIR/nats1.log ... $DIR/pg/log
Try:
  export SCOPECAST_ADMIN_TOKEN=\$(cat $DIR/admin.token)
  $SCOPECAST app create --url http://127.0.0.1:$((BASE_PORT + 2)) --name Demo --vendor Me --scope 'subscribe:lab.> publish:lab.>'
  curl -s http://127.0.0.1:$((BASE_PORT + 3))/readyz
EOF
wait
