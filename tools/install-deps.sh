#!/bin/sh
# Install the Debian packages smtptap needs to build, test and benchmark.
# Called by `make run` / `make check` when something is missing; safe to run
# again (apt-get skips what is already there). Needs root or sudo.
set -eu

BUILD_PKGS="build-essential pkg-config libevent-dev libssl-dev libsqlite3-dev sqlite3"
TEST_PKGS="libcmocka-dev clang libclang-rt-14-dev valgrind python3 python3-pytest python3-pytest-xdist python3-aiosmtpd python3-cryptography \
libnet-ssleay-perl libio-socket-ssl-perl \
swaks postfix curl msmtp openssl php-cli libphp-phpmailer nodejs node-nodemailer time"
BENCH_PKGS="haproxy time stunnel4"
# make coverage: llvm-profdata-14 and llvm-cov-14 for clang-14's profiles.
COVER_PKGS="clang llvm-14"

case "${1:-all}" in
build) PKGS="$BUILD_PKGS" ;;
test) PKGS="$BUILD_PKGS $TEST_PKGS" ;;
cover) PKGS="$BUILD_PKGS $COVER_PKGS" ;;
all) PKGS="$BUILD_PKGS $TEST_PKGS $BENCH_PKGS $COVER_PKGS" ;;
*) echo "usage: $0 [build|test|cover|all]" >&2; exit 2 ;;
esac

missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
		missing="$missing $p"
done
[ -z "$missing" ] && exit 0

SUDO=""
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install:$missing" >&2; exit 1; }
	SUDO="sudo"
fi
echo "install-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# Postfix is only wanted for smtp-sink/smtp-source: never configure a live MTA.
echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
$SUDO apt-get update -q >/dev/null
$SUDO apt-get install -y -q --no-install-recommends $missing >/dev/null
