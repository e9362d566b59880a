#!/usr/bin/env bash
# Image test: edgegw's container image under podman (no Docker engine).
#
# Builds the image (packaging/build-image.sh), then runs, with podman and host
# networking on free loopback ports:
#   - a cloud simulator (edgegw cloudsim, from the same image),
#   - the gateway with a named state volume and the admin socket directory
#     bind-mounted from the host,
# and checks: it runs as uid 65532 and serves; the state volume holds the
# key and the registry with the right owner and modes; a device added over
# the admin socket publishes through the gateway to the simulator; the
# health check passes (SKIP while the binary lacks `edgegw health` or
# /healthz); state survives a container restart; `podman stop` is clean.
#
# Last line: "image: N passed, M failed, K skipped"; non-zero exit on failure.
# Needs root, podman, runc and mosquitto-clients (mosquitto_pub, _sub, _rr).
# Environment: EDGEGW_IMAGE tests that image instead of building one.
# pass/fail/skip always succeed, so "check && pass || fail" is safe (SC2015);
# '$edgegw/…' topics and dpkg-query formats are literal (SC2016); cleanup and
# helpers run from traps and wait_until (SC2317).
# shellcheck disable=SC2015,SC2016,SC2317,SC2001
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

PK=a1ImgTest01 DN=pump-1
passed=0 failed=0 skipped=0 failures=()
pass() { passed=$((passed + 1)); echo "PASS  $1${2:+: $2}"; }
fail() { failed=$((failed + 1)); failures+=("$1"); echo "FAIL  $1${2:+: $2}"; }
skip() { skipped=$((skipped + 1)); echo "SKIP  $1${2:+: $2}"; }
step() { echo; echo "== $*"; }
start=$SECONDS

if [[ $EUID -ne 0 ]]; then
	echo "test-image.sh: needs root (podman)" >&2
	exit 2
fi
for tool in podman runc mosquitto_pub mosquitto_sub mosquitto_rr; do
	command -v "$tool" >/dev/null || { echo "test-image.sh: needs $tool (apt-get install podman runc mosquitto-clients)" >&2; exit 2; }
done

WORK=$(mktemp -d /var/tmp/edgegw-imgtest.XXXXXX)
NAME=edgegw-imgtest-$$
# podman's defaults fail on these machines (crun, rlimits): see
# shared/platform-notes.md.
export CONTAINERS_CONF=$WORK/containers.conf
cat >"$CONTAINERS_CONF" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
events_logger = "file"
cgroup_manager = "cgroupfs"
EOF

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	local ctr
	for ctr in "$NAME" "$NAME-cloud"; do # one at a time: a missing one stops podman rm; -v: anonymous volumes too
		podman rm -f -v --ignore -t 5 "$ctr" >/dev/null 2>&1
	done
	podman volume rm -f "$NAME" >/dev/null 2>&1
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

finish() {
	echo
	[[ $failed -eq 0 ]] || echo "failed: ${failures[*]}"
	echo "took $((SECONDS - start)) s"
	echo "image: $passed passed, $failed failed, $skipped skipped"
	# Under CI (EDGEGW_REQUIRE_PEERS=1) a skipped check is a failure: a
	# green run must mean every check really ran.
	[[ $failed -eq 0 && ( ${EDGEGW_REQUIRE_PEERS:-} != 1 || $skipped -eq 0 ) ]]
	exit $?
}

wait_until() {
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		[[ $SECONDS -lt $deadline ]] || return 1
		sleep 0.2
	done
}

# free_port prints a TCP port nothing listens on, below the ephemeral range
# (where other programs' outgoing connections and :0 listeners land).
free_port() {
	local p low
	read -r low _ </proc/sys/net/ipv4/ip_local_port_range
	((low > 11000)) || low=32768
	while :; do
		p=$((10000 + RANDOM % (low - 10000)))
		ss -Htln "sport = :$p" | grep -q . || { echo "$p"; return; }
	done
}

admin() {
	timeout 10 mosquitto_rr --unix "$WORK/run/admin.sock" -i "imgtest-$RANDOM" -W 5 \
		-t '$edgegw/admin/v1/request' -e '$edgegw/admin/v1/response' -m "$1" 2>&1
}

logs_tail() { podman logs --tail "${2:-15}" "$1" 2>&1 | sed 's/^/      | /'; }

step "image"
if [[ -n ${EDGEGW_IMAGE:-} ]]; then
	IMAGE=$EDGEGW_IMAGE
	podman image exists "$IMAGE" && pass "image" "using $IMAGE" || { fail "image" "$IMAGE not found"; finish; }
else
	IMAGE=localhost/edgegw:imgtest
	if out=$(packaging/build-image.sh "$IMAGE" 2>&1); then
		pass "build" "$(tail -n1 <<<"$out")"
	else
		echo "$out" | sed 's/^/      | /'
		fail "build" "packaging/build-image.sh failed"
		finish
	fi
fi
user=$(podman image inspect --format '{{.Config.User}}' "$IMAGE")
[[ $user == 65532:65532 ]] && pass "non-root" "image user $user" || fail "non-root" "image user '$user'"
hc=$(podman image inspect --format '{{if .Config.Healthcheck}}{{join .Config.Healthcheck.Test " "}}{{end}}' "$IMAGE" 2>/dev/null)
[[ $hc == *"edgegw health"* ]] && pass "healthcheck" "HEALTHCHECK $hc" || fail "healthcheck" "no HEALTHCHECK in the image config"

# What does the binary in the image support?
has_cmd() { podman run --rm --network=none "$IMAGE" "$1" -h >/dev/null 2>&1; }
has_health=no
has_cmd health && has_health=yes

step "run"
MQTT=$(free_port) METRICS=$(free_port) CLOUD=$(free_port)
mkdir -p "$WORK/run" "$WORK/cloud"
chown 65532:65532 "$WORK/run"
secret=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
devpw=$(od -An -tx1 -N12 /dev/urandom | tr -d ' \n')
printf 'ProductKey,DeviceName,DeviceSecret\n%s,%s,%s\n' "$PK" "$DN" "$secret" >"$WORK/cloud/devices.csv"
chmod 0755 "$WORK/cloud" && chmod 0644 "$WORK/cloud/devices.csv"
sed -e "s|^listeners = .*|listeners = [\"tcp://127.0.0.1:$MQTT\", \"unix:///run/edgegw/admin.sock\"]|" \
	-e "s|^listen = \"127.0.0.1:9464\"|listen = \"127.0.0.1:$METRICS\"|" \
	-e "s|^endpoint = \"\"|endpoint = \"tcp://127.0.0.1:$CLOUD\"|" \
	packaging/edgegw.toml >"$WORK/edgegw.toml"
chmod 0644 "$WORK/edgegw.toml"

podman run -d --name "$NAME-cloud" --network=host -v "$WORK/cloud:/cloud:ro" "$IMAGE" \
	cloudsim -listen "127.0.0.1:$CLOUD" -dialect aliyun -devices /cloud/devices.csv -observer obs:obspw >/dev/null 2>&1 ||
	{ fail "cloudsim" "podman run failed"; finish; }
wait_until 10 bash -c "</dev/tcp/127.0.0.1/$CLOUD" || { fail "cloudsim" "no listener on 127.0.0.1:$CLOUD"; logs_tail "$NAME-cloud"; finish; }

# Host networking moves [metrics] listen off 9464, so the image's health
# command is given the test's port (same subcommand, same endpoint path).
if ! podman run -d --name "$NAME" --network=host -v "$NAME:/var/lib/edgegw" \
	--health-cmd "[\"/usr/bin/edgegw\", \"health\", \"-url\", \"http://127.0.0.1:$METRICS/healthz\", \"-timeout\", \"3s\"]" \
	-v "$WORK/edgegw.toml:/etc/edgegw/edgegw.toml:ro" -v "$WORK/run:/run/edgegw" "$IMAGE" >/dev/null 2>"$WORK/run.err"; then
	fail "run" "podman run: $(cat "$WORK/run.err")"
	finish
fi
if wait_until 15 test -S "$WORK/run/admin.sock" && wait_until 5 bash -c "</dev/tcp/127.0.0.1/$MQTT"; then
	pass "run" "serving MQTT on 127.0.0.1:$MQTT and the admin socket"
else
	fail "run" "the gateway does not serve; state $(podman inspect --format '{{.State.Status}}' "$NAME")"
	logs_tail "$NAME"
	finish
fi
uid=$(podman top "$NAME" huser 2>/dev/null | tail -n1 | tr -d ' ')
[[ $uid == 65532 ]] && pass "uid" "the gateway runs as uid 65532" || fail "uid" "runs as '$uid'"
vol=$(podman volume inspect --format '{{.Mountpoint}}' "$NAME")
modes=$(stat -c '%u %a' "$vol" "$vol/edgegw.key" "$vol/registry.db" 2>&1 | tr '\n' ',')
[[ $modes == "65532 700,65532 600,65532 600," ]] &&
	pass "volume" "/var/lib/edgegw 0700, edgegw.key and registry.db 0600, all uid 65532" ||
	fail "volume" "owner/mode of dir,key,registry: $modes"
keysum=$(sha256sum <"$vol/edgegw.key")

step "a device publishes through the container"
r1=$(admin "{\"id\":\"p\",\"method\":\"product.add\",\"params\":{\"productKey\":\"$PK\",\"dialect\":\"aliyun\"}}")
r2=$(admin "{\"id\":\"d\",\"method\":\"device.add\",\"params\":{\"productKey\":\"$PK\",\"deviceName\":\"$DN\",\"deviceSecret\":\"$secret\",\"localPassword\":\"$devpw\"}}")
device_added=no
if [[ $r1 != *'"code":200'* || $r2 != *'"code":200'* ]]; then
	fail "publish" "admin product.add/device.add: $r1 / $r2"
else
	device_added=yes
	timeout 30 stdbuf -oL mosquitto_sub -d -h 127.0.0.1 -p "$CLOUD" -u obs -P obspw -i imgtest-observer \
		-t '#' -v -C 1 >"$WORK/observed.txt" 2>&1 &
	observer=$!
	topic=/sys/$PK/$DN/thing/event/property/post
	payload="{\"id\":\"1\",\"params\":{\"imgtest\":$RANDOM}}"
	if ! wait_until 10 grep -q SUBACK "$WORK/observed.txt"; then
		fail "publish" "observer could not subscribe at the simulator"
	elif ! out=$(timeout 20 mosquitto_pub -h 127.0.0.1 -p "$MQTT" -i "$DN" -u "$DN&$PK" -P "$devpw" -q 1 -t "$topic" -m "$payload" 2>&1); then
		fail "publish" "device publish failed: $out"
	elif wait_until 20 grep -qF "$topic $payload" "$WORK/observed.txt"; then
		pass "publish" "QoS 1 publish from $PK/$DN reached the cloud simulator through the container"
	else
		fail "publish" "the simulator never saw the message"
		logs_tail "$NAME"
	fi
	kill "$observer" 2>/dev/null
	wait "$observer" 2>/dev/null
fi

step "health"
if [[ $has_health == no ]]; then
	skip "health" "the image's binary has no 'edgegw health' subcommand yet"
elif ! bash -c "</dev/tcp/127.0.0.1/$METRICS" 2>/dev/null; then
	skip "health" "nothing listens on [metrics] listen (127.0.0.1:$METRICS): no /healthz yet"
elif out=$(podman healthcheck run "$NAME" 2>&1); then
	pass "health" "podman healthcheck run: healthy"
else
	fail "health" "podman healthcheck run: $out"
fi

step "restart"
if podman restart -t 25 "$NAME" >/dev/null 2>&1 && wait_until 15 test -S "$WORK/run/admin.sock" &&
	wait_until 5 bash -c "</dev/tcp/127.0.0.1/$MQTT"; then
	if [[ $(sha256sum <"$vol/edgegw.key") != "$keysum" ]]; then
		fail "restart" "the registry key changed"
	elif [[ $device_added == yes ]] &&
		[[ $(admin "{\"id\":\"g\",\"method\":\"device.get\",\"params\":{\"productKey\":\"$PK\",\"deviceName\":\"$DN\"}}") != *'"code":200'* ]]; then
		fail "restart" "device $PK/$DN is no longer registered"
	else
		pass "restart" "same key$([[ $device_added == yes ]] && echo ", device still registered") after podman restart"
	fi
else
	fail "restart" "the gateway does not serve after podman restart"
	logs_tail "$NAME"
fi

step "stop"
t0=$(date +%s%N)
podman stop -t 25 "$NAME" >/dev/null 2>&1
ms=$((($(date +%s%N) - t0) / 1000000))
code=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
if [[ $code == 0 ]]; then
	pass "stop" "SIGTERM: exit 0 in $ms ms"
else
	fail "stop" "exit code $code after $ms ms"
	logs_tail "$NAME"
fi

finish
