#!/bin/sh
# edgegw post-install (deb postinst, rpm %post).
#   deb: $1 = configure, $2 = the previously configured version (empty on a
#        fresh install); abort-* after a failed upgrade or removal.
#   rpm: $1 = number of edgegw packages after this step (1 install, 2 upgrade).
# Fresh install: create the user and directories, enable and start the
# service. Upgrade: restart the service if it runs; enablement is left as
# the administrator set it. A service that fails to start never fails the
# package installation (see `journalctl -u edgegw`).
set -e

upgrade=no
case "$1" in
configure) [ -z "$2" ] || upgrade=yes ;;
abort-upgrade | abort-remove | abort-deconfigure) upgrade=yes ;;
[0-9]*) [ "$1" -lt 2 ] || upgrade=yes ;;
*) exit 0 ;;
esac

systemd-sysusers edgegw.conf
systemd-tmpfiles --create edgegw.conf

booted=no
[ ! -d /run/systemd/system ] || booted=yes
if [ "$booted" = yes ]; then
	systemctl daemon-reload || true
fi

if [ "$upgrade" = yes ]; then
	if [ "$booted" = yes ]; then
		systemctl try-restart edgegw.service ||
			echo "edgegw: restart failed; see: journalctl -u edgegw" >&2
	fi
else
	systemctl enable edgegw.service
	if [ "$booted" = yes ]; then
		systemctl start edgegw.service ||
			echo "edgegw: start failed; see: journalctl -u edgegw" >&2
	fi
	echo "edgegw: configure /etc/edgegw/edgegw.toml, then: systemctl restart edgegw"
	echo "edgegw: back up /etc/edgegw/edgegw.key (created on the first start) with /var/lib/edgegw"
fi
exit 0
