# plugd — build, run and test. See README.md.
#
#   make build   bin/plugd, bin/pcompile and a fresh build of every plugin in var/plugins/
#   make run     build, start plugd with every shipped plugin loaded (Ctrl-C stops it)
#   make test    install test dependencies if missing, build, run every test

GO      ?= go
# The host and every plugin must be built with the same settings; pcompile
# reads them from bin/plugd, so this is the one place they are chosen.
GOFLAGS_BUILD := -trimpath
export CGO_ENABLED := 1

PLUGINS := $(patsubst %/,%,$(wildcard plugins/*/))

.PHONY: build bins plugins run test test-go deps fmt vet clean

build: bins plugins

bins:
	$(GO) build $(GOFLAGS_BUILD) -o bin/plugd ./host
	$(GO) build $(GOFLAGS_BUILD) -o bin/pcompile ./pcompile

plugins: bins
	bin/pcompile -o var/plugins -host bin/plugd $(PLUGINS)
	@scripts/prune-plugins.sh var/plugins var/data

run: build
	scripts/run.sh

# Non-Go tools the tests need (apksigner, ...); each script installs only
# what is missing, with apt-get, and needs root for that.
deps:
	@for s in scripts/deps/*.sh; do [ -e "$$s" ] || continue; echo "== $$s"; bash "$$s" || exit 1; done

# Unit tests run under the race detector. The end-to-end suites (they start
# the real plugd and build plugins with pcompile) and pcompile's own build
# tests run without it: a -race host only loads -race plugins.
E2E_PKGS  = $(shell $(GO) list ./... | grep -e /e2e -e /pcompile)
UNIT_PKGS = $(shell $(GO) list ./... | grep -v -e /e2e -e /pcompile)

test: deps build vet
	$(GO) test -race -count=1 -timeout 10m $(UNIT_PKGS)
	PLUGD_BIN=$(CURDIR)/bin/plugd PCOMPILE_BIN=$(CURDIR)/bin/pcompile $(GO) test -count=1 -timeout 15m -p 2 $(E2E_PKGS)

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...

clean:
	rm -rf bin var/plugins
