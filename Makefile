# provisiond: `make run` starts the service on its embedded defaults,
# `make test` installs what the tests need and runs vet and the tests.

GO       ?= go
PKGS     := ./...
# Debian packages the tests use: libcoap's client and Mosquitto's clients
# (interop tests), the Mosquitto broker (external-broker test), openssl, and
# zbarimg (zbar-tools) to scan the QR labels we render, headless
# Chromium for the browser tests of the installer page and the console,
# zsh and fish, which check provctl's completion scripts, and nginx with its
# stream module (the tested load-balancer configuration in docs/nginx/; the
# service the package starts is stopped: the test runs its own nginx).
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test deps etcd estclient vet lint vuln fmt-check size-check build bench storm rates soak soak-mosquitto fuzz clean

run:
	$(GO) run ./cmd/provisiond

build:
	$(GO) build -o bin/ ./cmd/...

deps:
	@missing=""; \
	command -v coap-client-openssl >/dev/null || missing="$$missing libcoap3-bin"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v mosquitto_rr >/dev/null || missing="$$missing mosquitto-clients"; \
	command -v zbarimg >/dev/null || missing="$$missing zbar-tools"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v zsh >/dev/null || missing="$$missing zsh"; \
	[ -x /usr/sbin/dhclient ] || missing="$$missing isc-dhcp-client"; \
	[ -x /usr/sbin/udhcpc ] || missing="$$missing udhcpc"; \
	[ -x /usr/sbin/dhcrelay ] || missing="$$missing isc-dhcp-relay"; \
	[ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || missing="$$missing iproute2"; \
	[ -x /usr/sbin/freeradius ] || missing="$$missing freeradius"; \
	[ -f /usr/lib/freeradius/rlm_rest.so ] || missing="$$missing freeradius-rest"; \
	command -v radclient >/dev/null || missing="$$missing freeradius-utils"; \
	command -v eapol_test >/dev/null || missing="$$missing eapoltest"; \
	command -v fish >/dev/null || missing="$$missing fish"; \
	[ -x /usr/sbin/nginx ] && [ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || missing="$$missing nginx libnginx-mod-stream"; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null; \
		for svc in nginx freeradius isc-dhcp-relay; do case "$$missing" in *$$svc*) if command -v systemctl >/dev/null && systemctl is-active -q $$svc 2>/dev/null; then \
			$(SUDO) systemctl disable --now $$svc; fi;; esac; done; \
	fi
	$(GO) mod download
	$(MAKE) etcd estclient

# etcd, pinned, built from its Go module into bin/ (the cluster engine's
# tests run it). `go install` refuses the module (its go.mod has replace
# directives), so it is built inside a scratch module under bin/.
ETCD_VERSION := v3.7.3
etcd:
	@[ -x bin/etcd ] && bin/etcd --version | grep -q "etcd Version: $(ETCD_VERSION:v%=%)" || { \
		rm -rf bin/etcd-build && mkdir -p bin/etcd-build && cd bin/etcd-build && \
		printf 'module etcdbuild\n\ngo 1.26\n' > go.mod && \
		$(GO) get go.etcd.io/etcd/server/v3@$(ETCD_VERSION) && \
		$(GO) build -o ../etcd go.etcd.io/etcd/server/v3; }
	bin/etcd --version | head -1

# GlobalSign's EST client (github.com/globalsign/est/cmd/estclient), pinned,
# the stock client of the EST interop tests. Its package cannot be imported
# here: it needs go-tpm v0.3, and smallstep's graph brings go-tpm v0.9, where
# the API it calls is gone. So it is built in a scratch module of its own,
# like etcd.
ESTCLIENT_VERSION := v1.0.6

estclient:
	@[ -x bin/estclient ] && bin/estclient version 2>/dev/null | grep -q "$(ESTCLIENT_VERSION:v%=%)" || { \
		rm -rf bin/estclient-build && mkdir -p bin/estclient-build && cd bin/estclient-build && \
		printf 'module estclientbuild\n\ngo 1.26\n' > go.mod && \
		$(GO) get github.com/globalsign/est/cmd/estclient@$(ESTCLIENT_VERSION) && \
		$(GO) build -o ../estclient github.com/globalsign/est/cmd/estclient; }
	bin/estclient version

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet $(PKGS)

# No tracked file over 1 MB: binaries, build output and data dirs stay out of git.
size-check:
	@big=$$(git ls-files -z | xargs -0 -r stat -c '%s %n' 2>/dev/null | awk '$$1 > 1048576 {print $$2 " (" $$1 " bytes)"}'); \
	if [ -n "$$big" ]; then echo "tracked files over 1 MB (binaries and build output do not belong in git):"; echo "$$big"; exit 1; fi

# staticcheck, pinned, built into bin/ through the Go module proxy.
STATICCHECK_VERSION := v0.8.2
lint:
	@[ -x bin/staticcheck ] && bin/staticcheck -version | grep -q "($(STATICCHECK_VERSION:v%=%))" || \
		GOBIN=$(CURDIR)/bin $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	bin/staticcheck $(PKGS)

# govulncheck, pinned, built into bin/ the same way. Findings fail the
# build; a machine that cannot reach its database (vuln.go.dev) gets a
# notice that the check did NOT run, never a pass.
GOVULNCHECK_VERSION := v1.9.0
vuln:
	@[ -x bin/govulncheck ] && bin/govulncheck -version | grep -q "govulncheck@$(GOVULNCHECK_VERSION)" || \
		GOBIN=$(CURDIR)/bin $(GO) install golang.org/x/vuln/cmd/govulncheck@$(GOVULNCHECK_VERSION)
	@bin/govulncheck $(PKGS) > bin/govulncheck.out 2>&1; rc=$$?; cat bin/govulncheck.out; \
	if [ $$rc -ne 0 ] && grep -q 'fetching vulnerabilities: .*vuln.go.dev' bin/govulncheck.out; then \
		echo "*** govulncheck NOT RUN: its vulnerability database (vuln.go.dev) is unreachable from this machine ***"; \
	else exit $$rc; fi

# PROVISIOND_REQUIRE_TOOLS: a test whose tool is missing fails, never skips.
# The store-backed suites then run again on etcd (PROVISIOND_TEST_STORE):
# the whole inventory suite, and the end-to-end tests whose outcome rests on
# the store (the browser, interop and handshake tests do not; the cluster
# tests run on etcd in the first pass already). -parallel 4: the tests
# marked parallel mostly wait (timeouts, etcd members, nginx, Mosquitto,
# FreeRADIUS, DHCP clients), so four at a time on two cores shorten the
# longest package, internal/server, which sets CI's time.
ETCD_E2E := TestESTInterop|TestESTCoAPSAnswers|TestLwM2MRebootstrapAndRevocation|TestDHCPServesInventoryLeases|TestEnrollEndToEnd|TestRetryGetsSameAnswer|TestConcurrentEnrollmentsNeverShareAnAddress|TestMQTTEnrollAndOperate|TestRevokedDeviceRefusedAtConnect|TestRevocationEndToEnd|TestCertificateRenewal|TestBulkOverride|TestBackupAndRestore|TestPassphrasesSealedAtRest|TestFirmwareRollout
test: deps size-check fmt-check vet lint vuln
	PROVISIOND_REQUIRE_TOOLS=1 PROVISIOND_ETCD=$(CURDIR)/bin/etcd PROVISIOND_ESTCLIENT=$(CURDIR)/bin/estclient $(GO) test -race -count=1 -parallel 4 -timeout 15m $(PKGS)
	PROVISIOND_REQUIRE_TOOLS=1 PROVISIOND_ETCD=$(CURDIR)/bin/etcd PROVISIOND_TEST_STORE=etcd \
		$(GO) test -race -count=1 -timeout 10m ./devices/
	PROVISIOND_REQUIRE_TOOLS=1 PROVISIOND_ETCD=$(CURDIR)/bin/etcd PROVISIOND_TEST_STORE=etcd \
		$(GO) test -race -count=1 -timeout 10m -run '$(ETCD_E2E)' ./internal/server/
	$(MAKE) fuzz FUZZTIME=$(CI_FUZZTIME)

# Benchmarks behind docs/performance.md: the floors (ECDSA, issuance, bbolt
# commits), enrollment over DTLS and MQTT, the million-device inventory
# (INVENTORY_DEVICES, INVENTORY_DIR keeps the generated store), then the
# boot storm, the offered-rate runs and the 10,000-device soak as processes.
INVENTORY_DEVICES ?= 1000000
bench: build etcd
	$(GO) test -run XXX -bench . -benchtime 2s ./pki/ ./enroll/
	$(GO) test -run XXX -bench 'EnrollmentFloor|Bare(DTLS|MQTT|EST)$$' -benchtime 5000x ./internal/floor/
	$(GO) test -run XXX -bench 'BareMQTTOnline' -benchtime 10000x ./internal/floor/
	$(GO) test -run XXX -bench VerifyDevice -benchtime 2s ./internal/peers/
	$(GO) test -run XXX -bench 'Provision|LeaseExpires' -benchtime 5000x ./devices/
	$(GO) test -run XXX -bench 'EnrollDTLS|EnrollMQTT' -benchtime 5000x ./internal/server/
	$(GO) test -run XXX -bench 'EnrollTransports' -benchtime 3000x ./internal/server/
	$(GO) test -run XXX -bench DHCPRespond -benchtime 3s ./transport/dhcp/
	$(GO) test -run XXX -bench EAPTLSWithFreeRADIUS -benchtime 200x ./internal/server/
	$(GO) test -run XXX -bench MACAuthWithFreeRADIUS -benchtime 10000x ./internal/server/
	$(GO) test -run XXX -bench FirmwareDownload -benchtime 10x ./internal/server/
	$(GO) test -run XXX -bench 'EnrollStore' -benchtime 3000x ./internal/server/
	$(GO) test -run XXX -bench 'RevocationFanout' -benchtime 200x ./internal/server/
	MIGRATE_DEVICES=100000 $(GO) test -run XXX -bench Migrate -benchtime 1x -timeout 30m ./devices/
	INVENTORY_DEVICES=$(INVENTORY_DEVICES) $(GO) test -run XXX -bench LargeInventory -benchtime 1000x -timeout 60m ./internal/server/
	$(MAKE) cpu
	$(MAKE) storm
	$(MAKE) rates
	$(MAKE) soak
	$(MAKE) soak-mosquitto

# $(call bench_server,DIR): in a recipe line, start provisiond on a fresh
# DIR/data with a site "big" (a /14 pool), its pprof endpoint on DEBUG_ADDR;
# it stops when the line ends.
DEBUG_ADDR ?= 127.0.0.1:16060
bench_server = rm -rf $(1); mkdir -p $(1); \
	bin/provisiond --data $(1)/data --log-level warn --http-addr 127.0.0.1:18443 \
		--coaps-addr 127.0.0.1:15684 --mqtt-addr 127.0.0.1:18883 --debug-addr $(DEBUG_ADDR) & pid=$$!; \
	trap "kill $$pid" EXIT; sleep 2; \
	bin/provctl --data $(1)/data site create big --ssid Big --security wpa3-sae \
		--passphrase big-site-pass --cidr 10.128.0.0/14 \
		--lwm2m-server coaps://lwm2m.example.net --lwm2m-security certificate >/dev/null

# Latency at offered rates (devices booting per second, RATES) over DTLS.
RATES ?= 200 300 400 1000
RATE_DIR ?= /tmp/provisiond-rates
rates: build
	@$(call bench_server,$(RATE_DIR)) && \
	for r in $(RATES); do echo "offered $$r/s for 10 s:"; \
		bin/devsim --mint $$((r * 10)) --site big --data $(RATE_DIR)/data --arrival rate --rate $$r \
			--concurrency 2000 --attempts 20 --quiet || exit 1; done

# Issue 17's CPU table: the CPU time per enrollment of the server (against
# its public-key floor, internal/floor, measured first on one core) and of
# devsim (against the server's), over DTLS, MQTT and EST; CPU_N devices,
# 64 at a time, each transport on a fresh provisiond.
CPU_N          ?= 5000
CPU_DIR        ?= /tmp/provisiond-cpu
CPU_TRANSPORTS ?= coap mqtt est
cpu: build
	@for t in $(CPU_TRANSPORTS); do ( $(call bench_server,$(CPU_DIR)) && echo "$$t:" && \
		bin/devsim --mint $(CPU_N) --site big --data $(CPU_DIR)/data --concurrency 64 --transport $$t --cpu --quiet ) || exit 1; done

# SOAK_N devices enrolled over MQTT stay online SOAK_FOR: three site-wide
# pushes, lease renewals, then 100 revocations one by one; prints push and
# revocation latency and the server's memory: online before the first push,
# after three collections (live heap, stacks), and after the pushes.
SOAK_N   ?= 10000
SOAK_FOR ?= 60s
SOAK_DIR ?= /tmp/provisiond-soak
# SOAK_TRANSPORT is how the devices enroll before going online over MQTT.
SOAK_TRANSPORT ?= mqtt
soak: build
	@$(call bench_server,$(SOAK_DIR)) && \
	bin/devsim --mint $(SOAK_N) --site big --data $(SOAK_DIR)/data $(call transport_flags,$(SOAK_TRANSPORT)) --soak $(SOAK_FOR) \
		--pushes 3 --revoke 100 --renew-lease-every 60s --server-debug $(DEBUG_ADDR) --quiet

# The same fleet online on Mosquitto 2.0 (docs/mosquitto, provisiond
# --mqtt-broker): the devices enroll over DTLS, then SOAK_N stay online on
# Mosquitto's mutual-TLS listener; prints provisiond's RSS and Mosquitto's.
# No revocations: provisiond cannot cut a session on Mosquitto.
MQ_DIR ?= /tmp/provisiond-soak-mosquitto
soak-mosquitto: build
	@rm -rf $(MQ_DIR); mkdir -p $(MQ_DIR)/mosquitto; \
	bin/provisiond --data $(MQ_DIR)/data --log-level warn --http-addr 127.0.0.1:18443 --coaps-addr 127.0.0.1:15684 \
		--mqtt-broker mqtts://127.0.0.1:18885 --mqtt-bootstrap-url mqtts://127.0.0.1:18886 & pid=$$!; \
	trap "kill $$pid" EXIT; \
	for i in $$(seq 100); do [ -f $(MQ_DIR)/data/server.json ] && break; sleep 0.1; done; \
	bin/provctl --data $(MQ_DIR)/data site create big --ssid Big --security wpa3-sae \
		--passphrase big-site-pass --cidr 10.128.0.0/14 >/dev/null && \
	bin/provctl --data $(MQ_DIR)/data cert server --name localhost --ip 127.0.0.1 --out $(MQ_DIR)/mosquitto >/dev/null && \
	cp docs/mosquitto/acl-devices docs/mosquitto/acl-bootstrap $(MQ_DIR)/mosquitto/ && \
	sed -e 's#/etc/mosquitto/provisiond/#$(MQ_DIR)/mosquitto/#' -e 's#^listener 8883#listener 18885 127.0.0.1#' \
		-e 's#^listener 8884#listener 18886 127.0.0.1#' docs/mosquitto/mosquitto.conf > $(MQ_DIR)/mosquitto/mosquitto.conf && \
	printf 'persistence false\nuser %s\n' "$$(id -un)" >> $(MQ_DIR)/mosquitto/mosquitto.conf && \
	{ mosquitto -c $(MQ_DIR)/mosquitto/mosquitto.conf 2>$(MQ_DIR)/mosquitto.log & mpid=$$!; trap "kill $$pid $$mpid" EXIT; sleep 2; \
	bin/devsim --mint $(SOAK_N) --site big --data $(MQ_DIR)/data --transport coap --broker mqtts://127.0.0.1:18885 \
		--soak $(SOAK_FOR) --pushes 3 --revoke 0 --renew-lease-every 60s --rss-pid $$mpid --quiet; }

# The boot-storm table in docs/performance.md: a provisiond process, a peak
# run at 64 devices at a time, then STORM_X times as many at once; prints
# both summaries and the inventory's device, enrolled and lease counts.
PEAK_N    ?= 4000
STORM_N   ?= 6000
STORM_X   ?= 10
STORM_DIR ?= /tmp/provisiond-storm
# STORM_TRANSPORT: coap, mqtt, est, estcoaps (factory certificates; est
# takes them too with IDEVID=1, else HTTP Basic with the claim token) or
# lwm2m (bootstrap PSKs; factory certificates with IDEVID=1).
STORM_TRANSPORT ?= coap
transport_flags = --transport $(1) $(if $(filter estcoaps,$(1))$(IDEVID),--idevid) \
	$(if $(filter lwm2m,$(1)),$(if $(IDEVID),,--lwm2m-psk))
storm: build
	@$(call bench_server,$(STORM_DIR)) && \
	bin/devsim --mint $(PEAK_N) --site big --data $(STORM_DIR)/data --concurrency 64 $(call transport_flags,$(STORM_TRANSPORT)) && \
	bin/devsim --mint $(STORM_N) --site big --data $(STORM_DIR)/data --concurrency $$((64 * $(STORM_X))) --attempts 20 $(call transport_flags,$(STORM_TRANSPORT)) && \
	bin/provctl --data $(STORM_DIR)/data -o json site show big | grep -E '"(devices|enrolled|leases_in_use)"' && \
	echo "server RSS (kB), CPU time: $$(ps -o rss=,times= -p $$pid)"

# Fuzzing of every decoder of outside input: FUZZTIME each (make test runs
# them for CI_FUZZTIME; seeds and past findings are in each testdata/fuzz).
FUZZTIME    ?= 30s
CI_FUZZTIME ?= 4s
fuzz:
	GO=$(GO) bash .ci/fuzz FuzzDecodeEnrollRequest $(FUZZTIME) ./transport/wire/
	GO=$(GO) bash .ci/fuzz FuzzDecodeDeviceMessages $(FUZZTIME) ./transport/wire/
	GO=$(GO) bash .ci/fuzz FuzzParseCSR $(FUZZTIME) ./enroll/
	GO=$(GO) bash .ci/fuzz FuzzParseManifest $(FUZZTIME) ./enroll/
	GO=$(GO) bash .ci/fuzz FuzzParseClaimCode $(FUZZTIME) ./enroll/
	GO=$(GO) bash .ci/fuzz FuzzParseTopic $(FUZZTIME) ./transport/mqtt/topics/
	GO=$(GO) bash .ci/fuzz FuzzAPIRequestBodies $(FUZZTIME) ./internal/server/
	GO=$(GO) bash .ci/fuzz FuzzVerify $(FUZZTIME) ./firmware/
	GO=$(GO) bash .ci/fuzz FuzzDecodeCSR $(FUZZTIME) ./transport/est/
	GO=$(GO) bash .ci/fuzz FuzzParseCertsOnly $(FUZZTIME) ./transport/est/
	GO=$(GO) bash .ci/fuzz FuzzDecodeTLV $(FUZZTIME) ./transport/lwm2m/
	GO=$(GO) bash .ci/fuzz FuzzDecodeSenML $(FUZZTIME) ./transport/lwm2m/
	GO=$(GO) bash .ci/fuzz FuzzParseDiscover $(FUZZTIME) ./transport/lwm2m/
	GO=$(GO) bash .ci/fuzz FuzzDHCPRespond $(FUZZTIME) ./transport/dhcp/

clean:
	rm -rf bin
