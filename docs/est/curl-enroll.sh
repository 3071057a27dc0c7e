#!/bin/sh
# EST over HTTPS with nothing but curl and openssl (docs/protocol.md, "EST"):
# a device's key and CSR, provisiond's CA certificates, enrollment with the
# device's serial and claim token (HTTP Basic), its config over mutual TLS
# with the new certificate, and a re-enrollment. TestESTWithCurl runs it.
#
#   SERVER=prov.example.net:8443 ROOT=root.pem SERIAL=TH1-… TOKEN=… sh curl-enroll.sh DIR
#
# Exits 75 (EX_TEMPFAIL) when provisiond answers 202: the device is not
# claimed for a site yet; run it again after the Retry-After it printed.
set -eu
cd "${1:-.}"
est="https://$SERVER/.well-known/est"

# 1. The device's key (P-256) and its CSR, DER, then base64 as EST carries it.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out device.key
openssl req -new -key device.key -subj "/CN=$SERIAL" -outform DER -out device.csr
openssl base64 -in device.csr -out device.csr.b64

# 2. The CA certificates: a base64 PKCS#7 certs-only bundle (intermediate, root).
curl -sS --fail --cacert "$ROOT" "$est/cacerts" -o cacerts.b64
openssl base64 -d -in cacerts.b64 | openssl pkcs7 -inform DER -print_certs -out cacerts.pem

# 3. Enroll: serial and claim token as HTTP Basic, inside TLS that
#    authenticated the server. 200: the certificate; 202: retry later.
code=$(curl -sS --cacert "$ROOT" -u "$SERIAL:$TOKEN" -H 'Content-Type: application/pkcs10' \
	--data-binary @device.csr.b64 -D enroll.headers -o device.p7.b64 -w '%{http_code}' "$est/simpleenroll")
case $code in
200) ;;
202) echo "not claimed yet: $(grep -i '^retry-after' enroll.headers | tr -d '\r')" >&2; exit 75 ;;
*) echo "simpleenroll: HTTP $code: $(cat device.p7.b64)" >&2; exit 1 ;;
esac
openssl base64 -d -in device.p7.b64 | openssl pkcs7 -inform DER -print_certs -out device.pem

# 4. The device's Wi-Fi, network config, lease and firmware target, over
#    mutual TLS with its new certificate (and the intermediate).
cat device.pem cacerts.pem >device-chain.pem
curl -sS --fail --cacert "$ROOT" --cert device-chain.pem --key device.key "https://$SERVER/device/v1/config" -o config.json

# 5. Re-enroll: the same key, authenticated by the certificate it renews.
curl -sS --fail --cacert "$ROOT" --cert device-chain.pem --key device.key -H 'Content-Type: application/pkcs10' \
	--data-binary @device.csr.b64 "$est/simplereenroll" -o renewed.p7.b64
openssl base64 -d -in renewed.p7.b64 | openssl pkcs7 -inform DER -print_certs -out renewed.pem
