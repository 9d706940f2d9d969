# natsmesh's one task runner; .ci/run calls the same targets.
#   make run    set up and run natsmeshd (embedded default without a config)
#   make test   set up and run every test
#   make check  the fast tier: fmt, clippy, unit tests and the tests that
#               need no root, namespace, container or nats-server
#   make deps   install and verify the Debian packages the tests need
#   make lint   rustfmt and clippy, warnings as errors
#   make ci     deps + lint + test, as CI runs it
#   make deb    the natsmesh and natsmesh-broker .debs in target/packages/
#   make rpm    the same as .rpms
#   make image  the appliance image in target/image/ (make image-qemu boots it)
#   make drills the failure drills, longer than CI runs them

CARGO   ?= cargo
BROKERS ?= $(or $(NATSMESH_BROKERS),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/natsmesh/brokers)
CURRENT := 2.15.1
# The natsmesh build the rolling-upgrade drill starts from: the first that
# knows [fleet] lease_scope (move it on with each release).
PREVIOUS_REV ?= 2cc3837
export NATSMESH_BROKERS := $(BROKERS)

PACKAGES := target/packages
.PHONY: deps check image image-qemu drills run test lint fmt clippy ci brokers tools bench unit-security packages deb rpm release stage-broker package-tools manpage

# The pinned current nats-server is installed (hash-checked) when missing
# and put first on PATH; natsmeshd finds it there by default.
run:
	scripts/install-brokers $(CURRENT)
	$(CARGO) build --release -p natsmesh
	PATH="$(BROKERS)/$(CURRENT):$$PATH" target/release/natsmeshd $(if $(CONFIG),--config $(CONFIG)) run

brokers:
	scripts/install-brokers

# The Debian packages (apt, as root or through sudo), installed so that
# no transaction removes another's, then every command verified.
deps:
	scripts/deps

tools: package-tools
	@command -v cargo-nextest >/dev/null || $(CARGO) install --locked cargo-nextest
	@cargo-nextest --version >/dev/null

package-tools:
	@command -v cargo-deb >/dev/null || $(CARGO) install --locked cargo-deb
	@command -v cargo-generate-rpm >/dev/null || $(CARGO) install --locked cargo-generate-rpm
	@cargo-deb --version >/dev/null && cargo-generate-rpm --version >/dev/null

# The install tests boot Debian 12 and 13 and apt-get install these; the
# image test boots the appliance image.
test: deps brokers tools packages image
	$(CARGO) nextest run --workspace --profile $(if $(CI),ci,default)

# The fast tier for people who change code (no root, no network namespace,
# no container, no nats-server): under 3 minutes on 2 cores with a warm
# target/. CI still runs everything.
check: lint tools
	$(CARGO) nextest run --workspace --profile check

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

lint: fmt clippy

ci: deps lint test

release:
	$(CARGO) build --release --locked -p natsmesh

# The pinned broker and its licence, from the hash-checked artefact.
stage-broker:
	scripts/install-brokers $(CURRENT)
	install -D -m 0755 $(BROKERS)/$(CURRENT)/nats-server target/natsmesh-broker/nats-server
	install -D -m 0644 $(BROKERS)/$(CURRENT)/LICENSE target/natsmesh-broker/LICENSE

packages: deb rpm

# The appliance image (Debian 13, natsmesh preinstalled) in
# target/image/: .raw, .qcow2 (DigitalOcean), .img.gz (Linode).
image: deb
	scripts/build-image

# The image booted by its own bootloader in QEMU (TCG) to a ready natsmeshd.
image-qemu: image
	scripts/image-qemu

# The manual page, from the same definitions as --help.
manpage: release
	install -d target/man
	target/release/natsmeshd manpage | gzip -9n > target/man/natsmeshd.8.gz

deb: package-tools release stage-broker manpage
	$(CARGO) deb -p natsmesh --no-build -o $(PACKAGES)/
	$(CARGO) deb -p natsmesh-broker --no-build --deb-version $(CURRENT)-1 -o $(PACKAGES)/

rpm: package-tools release stage-broker manpage
	$(CARGO) generate-rpm -p daemon -o $(PACKAGES)/
	$(CARGO) generate-rpm -p broker -s 'version = "$(CURRENT)"' -o $(PACKAGES)/

# systemd's exposure score for the unit beside nats-server's hardened sample.
unit-security:
	scripts/unit-security

# Shell that sets $prev to the earlier natsmeshd the drills start from and
# the supervisor benchmark measures beside this build (empty: none).
previous_natsmeshd = prev="$(if $(PREVIOUS_NATSMESHD),$(abspath $(PREVIOUS_NATSMESHD)))"; \
	if [ -z "$$prev" ] && [ -n "$(PREVIOUS_REV)" ]; then prev=$$(scripts/build-previous "$(PREVIOUS_REV)"); fi;

# Failure drills (root; about 30 minutes): every drill, longer, reports in
# bench/results/drills/ (Markdown and JSON). CI plays two, reduced (a lost
# region; the rolling upgrade from a copy of the current build). Here the
# rolling upgrade starts from natsmeshd as built at
# PREVIOUS_REV (a git revision, 2cc3837 by default; scripts/build-previous
# builds it once into target/previous/), or from the binary
# PREVIOUS_NATSMESHD names; PREVIOUS_REV= (empty) starts from a copy of the
# current build.
drills: brokers
	$(previous_natsmeshd) \
	NATSMESH_DRILL_PREVIOUS_NATSMESHD="$$prev" \
	NATSMESH_DRILL_OUT=$(CURDIR)/bench/results/drills NATSMESH_DRILL_LOSS_SECS=30 NATSMESH_DRILL_LOAD_SECS=15 \
	  NATSMESH_DRILL_FLAPS=5 NATSMESH_DRILL_CUT_SECS=10 \
	  $(CARGO) nextest run -p natsmesh --test drills --profile drills --no-capture

# Benchmarks (about 20 minutes with their builds): each prints a table and writes it to
# bench/results/{supervisor,tls,discovery,publish,balancer,metrics,boot}.md. NATSMESH_BENCH_SOAK_SECS=1800
# for the 30-minute leak check; discovery needs root. The supervisor's
# footprint is measured beside the build at PREVIOUS_REV (the drills'
# starting point; PREVIOUS_NATSMESHD=<path> for another).
bench: brokers
	$(previous_natsmeshd) \
	NATSMESH_BENCH_PREVIOUS_NATSMESHD="$$prev" $(CARGO) bench -p natsmesh --bench supervisor
	$(CARGO) bench -p natsmesh --bench tls
	$(CARGO) bench -p natsmesh --bench discovery
	$(CARGO) bench -p natsmesh --bench publish
	$(CARGO) bench -p natsmesh --bench balancer
	$(CARGO) bench -p natsmesh --bench metrics
	$(MAKE) deb
	$(CARGO) bench -p natsmesh --bench boot
