#!/bin/sh
# edgegw pre-removal (deb prerm, rpm %preun).
#   deb: $1 = remove | upgrade | deconfigure | failed-upgrade
#   rpm: $1 = number of edgegw packages after this step (0 = erase).
# On removal: stop and disable the service and its socket. On upgrade the
# service keeps running; the new package's postinstall restarts it.
set -e

case "$1" in
remove | deconfigure | 0) ;;
*) exit 0 ;;
esac

if [ -d /run/systemd/system ]; then
	# The socket first, or a connection could start the service again.
	systemctl stop edgegw.socket edgegw.service || true
fi
systemctl disable --quiet edgegw.service edgegw.socket || true
exit 0
