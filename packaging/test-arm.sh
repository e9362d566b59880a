#!/usr/bin/env bash
# ARM test: edgegw's packages and multi-arch image for amd64, arm64 and
# armv7 (armhf), with the ARM binaries run under qemu-user on this amd64 host.
#
#   packages   packaging/build.sh builds .deb and .rpm for amd64, arm64 and
#              armhf (armv7hl); each .deb says the right Architecture
#   arm64      the binary unpacked from the arm64 .deb runs under
#   armv7      qemu-aarch64 / qemu-arm: `edgegw version` prints the build's
#              version and platform (linux/arm64, linux/arm), and `edgegw demo -duration 5s -devices 2` exits 0
#              with messages flowing (its summary shows cloud received > 0
#              and no failed publish)
#   image      ARCHS="amd64 arm64 arm" packaging/build-image.sh builds one
#              image per platform and a manifest list; `buildah manifest
#              inspect` lists linux/amd64, linux/arm64 and linux/arm/v7,
#              the OCI archive in dist/ holds the same index, and the
#              armv7 image's binary runs under qemu-arm
#
# The last line is "arm: N passed, M failed, K skipped"; non-zero exit on
# failure. Needs root (apt-get, buildah). Installs qemu-user when missing,
# without qemu-user-binfmt: nothing is registered with binfmt_misc, the
# emulators are called by name.
# pass/fail/skip always succeed, so "check && pass || fail" is safe (SC2015);
# cleanup runs from a trap (SC2317); sed indents captured output (SC2001).
# shellcheck disable=SC2015,SC2317,SC2001
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2

passed=0 failed=0 skipped=0 failures=()
pass() { passed=$((passed + 1)); echo "PASS  $1${2:+: $2}"; }
fail() { failed=$((failed + 1)); failures+=("$1"); echo "FAIL  $1${2:+: $2}"; }
skip() { skipped=$((skipped + 1)); echo "SKIP  $1${2:+: $2}"; }
step() { echo; echo "== $*"; }
start=$SECONDS

if [[ $EUID -ne 0 ]]; then
	echo "test-arm.sh: needs root (apt-get, buildah)" >&2
	exit 2
fi
if ! command -v qemu-aarch64 >/dev/null || ! command -v qemu-arm >/dev/null; then
	export DEBIAN_FRONTEND=noninteractive
	{ apt-get update -qq && apt-get install -y -qq --no-install-recommends qemu-user; } >/dev/null ||
		{ echo "test-arm.sh: could not install qemu-user" >&2; exit 2; }
fi
for tool in qemu-aarch64 qemu-arm buildah dpkg-deb; do
	command -v "$tool" >/dev/null || { echo "test-arm.sh: needs $tool (apt-get install qemu-user buildah runc)" >&2; exit 2; }
done

WORK=$(mktemp -d /var/tmp/edgegw-armtest.XXXXXX)
IMAGE=localhost/edgegw:armtest-$$
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	local j
	for j in $(jobs -p); do kill "$j" 2>/dev/null; done
	wait 2>/dev/null
	buildah rm "armtest-$$" >/dev/null 2>&1
	buildah manifest rm "$IMAGE" >/dev/null 2>&1
	buildah rmi "$IMAGE-amd64" "$IMAGE-arm64" "$IMAGE-armv7" >/dev/null 2>&1
	rm -rf "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

finish() {
	echo
	[[ $failed -eq 0 ]] || echo "failed: ${failures[*]}"
	echo "took $((SECONDS - start)) s"
	echo "arm: $passed passed, $failed failed, $skipped skipped"
	[[ $failed -eq 0 && (${EDGEGW_REQUIRE_PEERS:-} != 1 || $skipped -eq 0) ]]
	exit $?
}

step "packages"
t0=$SECONDS
if ! out=$(packaging/build.sh 2>&1); then
	echo "$out" | sed 's/^/      | /'
	fail "build" "packaging/build.sh failed"
	finish
fi
VERSION=$(sed -n 's/^== edgegw \([^ ]*\) .*/\1/p' <<<"$out" | head -n1)
mapfile -t pkgs < <(sed -n 's/^created package: //p' <<<"$out")
pass "build" "${#pkgs[@]} packages, version $VERSION, in $((SECONDS - t0)) s"
declare -A debs=()
for want in _amd64.deb _arm64.deb _armhf.deb .x86_64.rpm .aarch64.rpm .armv7hl.rpm; do
	p=$(printf '%s\n' "${pkgs[@]}" | grep -F -- "$want" | head -n1)
	if [[ -z $p || ! -s $p ]]; then
		fail "package $want" "not built"
		continue
	fi
	if [[ $p == *.deb ]]; then
		a=${want#_} a=${a%.deb}
		got=$(dpkg-deb -f "$p" Architecture 2>&1)
		[[ $got == "$a" ]] && pass "package $want" "$p (Architecture: $got)" ||
			fail "package $want" "$p says Architecture '$got'"
		debs[$a]=$p
	else
		pass "package $want" "$p"
	fi
done

# demo_check NAME QEMU PLATFORM DEB: the packaged binary under qemu-user.
demo_check() {
	local name=$1 qemu=$2 platform=$3 deb=$4 dir=$WORK/$1 v out rc recv
	if [[ -z $deb ]]; then
		fail "$name" "no package"
		return
	fi
	dpkg-deb -x "$deb" "$dir"
	if ! v=$($qemu "$dir/usr/bin/edgegw" version 2>&1); then
		fail "$name version" "$qemu: $v"
		return
	fi
	if [[ $(head -n1 <<<"$v") == "edgegw $VERSION" ]] && grep -qx "platform *$platform" <<<"$v"; then
		pass "$name version" "$qemu /usr/bin/edgegw version: $(paste -sd' ' <<<"$v" | tr -s ' ')"
	else
		fail "$name version" "'$v', want 'edgegw $VERSION' on $platform"
	fi
	out=$(timeout 60 "$qemu" "$dir/usr/bin/edgegw" demo -duration 5s -devices 2 -every 1s 2>&1)
	rc=$?
	# The highest "cloud received N" of the summary lines.
	recv=$(grep -o 'cloud received [0-9]*' <<<"$out" | awk '{print $3}' | sort -n | tail -n1)
	if [[ $rc -eq 0 && ${recv:-0} -gt 0 ]] && grep -q '^stopped after .* failed=0 ' <<<"$out"; then
		pass "$name demo" "cloud received $recv; $(grep '^stopped after' <<<"$out")"
	else
		fail "$name demo" "exit $rc, cloud received ${recv:-none}"
		tail -n 8 <<<"$out" | sed 's/^/      | /'
	fi
}

step "ARM binaries under qemu-user"
# Both at once: the demos mostly wait on their 5 s timer.
demo_check arm64 qemu-aarch64 linux/arm64 "${debs[arm64]:-}" >"$WORK/arm64.log" 2>&1 &
demo_check armv7 qemu-arm linux/arm "${debs[armhf]:-}" >"$WORK/armv7.log" 2>&1 &
wait
for n in arm64 armv7; do
	cat "$WORK/$n.log"
	passed=$((passed + $(grep -c '^PASS' "$WORK/$n.log")))
	while read -r _ what _; do
		failed=$((failed + 1)) failures+=("${what%:}")
	done < <(grep '^FAIL' "$WORK/$n.log")
done

step "multi-arch image"
t0=$SECONDS
if ! out=$(ARCHS="amd64 arm64 arm" packaging/build-image.sh "$IMAGE" 2>&1); then
	echo "$out" | sed 's/^/      | /'
	fail "image" "packaging/build-image.sh failed"
	finish
fi
pass "image" "$(tail -n1 <<<"$out") in $((SECONDS - t0)) s"
# platforms JSON: "os/arch[/variant]" of each manifest in an index or list.
platforms() {
	tr -d ' \n' | grep -o '"platform":{[^}]*}' |
		sed -e 's/.*"architecture":"\([^"]*\)".*"os":"\([^"]*\)"\(.*"variant":"\([^"]*\)"\)\{0,1\}.*/\2\/\1\/\4/' -e 's|/$||' |
		sort | paste -sd' ' -
}
want="linux/amd64 linux/arm/v7 linux/arm64"
got=$(buildah manifest inspect "$IMAGE" 2>&1 | platforms)
[[ $got == "$want" ]] && pass "manifest" "buildah manifest inspect: $got" || fail "manifest" "platforms '$got', want '$want'"
archive=dist/edgegw-image_$VERSION.oci.tar
if [[ -s $archive ]]; then
	# index.json points at the image index, a blob.
	idx=$(tar -xOf "$archive" index.json | grep -o 'sha256:[0-9a-f]*' | head -n1)
	got=$(tar -xOf "$archive" "blobs/sha256/${idx#sha256:}" 2>/dev/null | platforms)
	[[ $got == "$want" ]] && pass "archive" "$archive: OCI index of $got" || fail "archive" "$archive: platforms '$got'"
else
	fail "archive" "no $archive"
fi
# The armv7 image holds the armv7 binary: run it from the image's file system.
# (buildah from warns on stderr that the platform is not the host's.)
if ctr=$(buildah from --pull=never --name "armtest-$$" "$IMAGE-armv7" 2>"$WORK/from.err") && mnt=$(buildah mount "$ctr" 2>&1) &&
	v=$(qemu-arm "$mnt/usr/bin/edgegw" version 2>&1) && [[ $(head -n1 <<<"$v") == "edgegw $VERSION" ]]; then
	pass "image armv7" "$(buildah inspect --type image --format '{{.OCIv1.OS}}/{{.OCIv1.Architecture}}/{{.OCIv1.Variant}}' "$IMAGE-armv7"): qemu-arm /usr/bin/edgegw version: $(head -n1 <<<"$v")"
else
	fail "image armv7" "${v:-${mnt:-$(cat "$WORK/from.err")}}"
fi

finish
