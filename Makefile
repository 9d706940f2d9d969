# natsmesh's one task runner; .ci/run calls the same targets.
#   make run    set up and run natsmeshd (embedded default without a config)
#   make test   set up and run every test
#   make lint   rustfmt and clippy, warnings as errors
#   make ci     lint + test, as CI runs it

CARGO   ?= cargo
BROKERS ?= $(or $(NATSMESH_BROKERS),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/natsmesh/brokers)
CURRENT := 2.15.1
export NATSMESH_BROKERS := $(BROKERS)

.PHONY: run test lint fmt clippy ci brokers tools bench unit-security

# The pinned current nats-server is installed (hash-checked) when missing
# and put first on PATH; natsmeshd finds it there by default.
run:
	scripts/install-brokers $(CURRENT)
	$(CARGO) build --release -p natsmesh
	PATH="$(BROKERS)/$(CURRENT):$$PATH" target/release/natsmeshd $(if $(CONFIG),--config $(CONFIG)) run

brokers:
	scripts/install-brokers

tools:
	@command -v cargo-nextest >/dev/null || $(CARGO) install --locked cargo-nextest

test: brokers tools
	$(CARGO) nextest run --workspace --profile $(if $(CI),ci,default)

fmt:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

lint: fmt clippy

ci: lint test

# systemd's exposure score for the unit beside nats-server's hardened sample.
unit-security:
	scripts/unit-security

# Benchmarks (about 12 minutes): each prints a table and writes it to
# bench/results/{supervisor,tls,discovery,publish,balancer}.md. NATSMESH_BENCH_SOAK_SECS=1800
# for the 30-minute leak check; discovery needs root.
bench: brokers
	$(CARGO) bench -p natsmesh --bench supervisor
	$(CARGO) bench -p natsmesh --bench tls
	$(CARGO) bench -p natsmesh --bench discovery
	$(CARGO) bench -p natsmesh --bench publish
	$(CARGO) bench -p natsmesh --bench balancer
