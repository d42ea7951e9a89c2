# shellcheck shell=bash
# tools/bench/tls.sh - the TLS pieces shared by tools/bench.sh and
# tools/bench/profile.sh (sourced, not run): the test PKI and the stunnel
# converters' configuration.  Needs the openssl CLI and stunnel (Debian
# packages openssl and stunnel4).

# bench_tls_make_pki DIR ec|rsa: a CA and a leaf for localhost and 127.0.0.1
# signed by it, in DIR: ca.pem ca.key (also smtptap's --ca-dir layout),
# leaf.pem leaf.key, and leaf-full.pem (leaf and key in one file, for
# haproxy's crt).  Keys are ECDSA P-256 (smtptap's forged leaves are P-256
# too) or RSA 2048.  Returns non-zero with openssl's output in
# DIR/openssl.log.
bench_tls_make_pki() {
	local d=$1 newkey
	mkdir -p "$d" && chmod 700 "$d" || return 1
	if [[ $2 == rsa ]]; then
		newkey=(-newkey rsa:2048)
	else
		newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256)
	fi
	cat >"$d/leaf.ext" <<'EOT'
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOT
	{
		openssl req -x509 "${newkey[@]}" -nodes -sha256 -days 30 \
			-subj "/O=smtptap bench/CN=smtptap bench CA" \
			-addext "basicConstraints=critical,CA:TRUE" \
			-addext "keyUsage=critical,keyCertSign,cRLSign" \
			-addext "subjectKeyIdentifier=hash" \
			-keyout "$d/ca.key" -out "$d/ca.pem" &&
			openssl req -new "${newkey[@]}" -nodes -subj "/O=smtptap bench/CN=localhost" \
				-keyout "$d/leaf.key" -out "$d/leaf.csr" &&
			openssl x509 -req -sha256 -days 30 -in "$d/leaf.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
				-set_serial "0x$(openssl rand -hex 8)" -extfile "$d/leaf.ext" -out "$d/leaf.pem" &&
			cat "$d/leaf.pem" "$d/leaf.key" >"$d/leaf-full.pem" &&
			chmod 600 "$d"/*.key "$d/leaf-full.pem" &&
			openssl verify -CAfile "$d/ca.pem" "$d/leaf.pem"
	} >"$d/openssl.log" 2>&1
}

# bench_tls_stunnel_conf client|server ACCEPT_PORT CONNECT_PORT PKI_DIR
# [SERVER_RESUME]: print a stunnel configuration.  client: plaintext in, TLS
# out, verifying the relay's certificate (chain from the bench CA and the
# name localhost, which is also the SNI sent), never resuming a session (a
# full handshake per connection, like a PHP request); server: TLS in with
# the bench leaf, plaintext out, letting a relay resume its sessions unless
# SERVER_RESUME is 0.  Nagle off on both sides, warnings and errors only, in
# the foreground (logging to stderr).
bench_tls_stunnel_conf() {
	local role=$1 ap=$2 cp=$3 pki=$4 resume=${5:-1}
	echo "foreground = yes"
	echo "pid ="
	echo "syslog = no"
	echo "debug = 4"
	echo "[bench-$role]"
	echo "accept = 127.0.0.1:$ap"
	echo "connect = 127.0.0.1:$cp"
	echo "socket = l:TCP_NODELAY=1"
	echo "socket = r:TCP_NODELAY=1"
	if [[ $role == client || $resume == 0 ]]; then
		echo "sessionResume = no"
	fi
	if [[ $role == client ]]; then
		echo "client = yes"
		echo "sni = localhost"
		echo "verifyChain = yes"
		echo "CAfile = $pki/ca.pem"
		echo "checkHost = localhost"
	else
		echo "cert = $pki/leaf.pem"
		echo "key = $pki/leaf.key"
	fi
}

# bench_tls_smtptap_args CA_DIR PKI_DIR: smtptap's proxy flags for implicit
# TLS on both legs, forging with the bench CA (copied into CA_DIR, which
# must not exist yet) and trusting it upstream.  Sets BENCH_TLS_SMTPTAP_ARGS.
bench_tls_smtptap_args() {
	local ca=$1 pki=$2
	mkdir -m 700 "$ca" && cp "$pki/ca.pem" "$pki/ca.key" "$ca/" && chmod 600 "$ca/ca.key" || return 1
	# shellcheck disable=SC2034 # used by the scripts that source this file
	BENCH_TLS_SMTPTAP_ARGS=(--client-tls implicit --upstream-tls implicit --ca-dir "$ca"
		--upstream-ca "$pki/ca.pem")
}
