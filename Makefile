# Every target creates what it needs: a fresh machine needs only `make run` or `make test`.
PYTHON   ?= python3
PY313    ?= python3.13
VENV     := .venv
VENV313  := .venv313
SYS_PKGS := espeak-ng sox sipp baresip kamailio valgrind
SYS_PKGS += chromium chromedriver  # the browser softphone's tests (Debian: chromium, chromium-driver)

.DEFAULT_GOAL := help
.PHONY: help run native native313 test test311 test313 lint bench-codecs bench-load bench-rss bench-sip bench-softphone bench-transcript bench-turns system-deps clean

help: ## List the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

# Serving needs the package and its own dependencies only; the test and benchmark extras
# (pytest, the provider SDKs the fakes validate against, matplotlib, py-spy, ...) are installed
# on top by the targets that use them. --no-compile: modules are byte-compiled when first
# imported, not all of scipy's at install time.
$(VENV)/.serve: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check --no-compile -e '.[native]'
	touch $@

$(VENV)/.installed: $(VENV)/.serve
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test,bench]'
	touch $@

$(VENV313)/.installed: pyproject.toml
	test -x $(VENV313)/bin/python || PYENV_VERSION=3.13.0 $(PY313) -m venv $(VENV313)
	$(VENV313)/bin/pip install -q --upgrade pip
	$(VENV313)/bin/pip install -q -e '.[test,native]'
	touch $@

system-deps: ## Install the Debian packages the tests use (espeak-ng, sox, sipp, baresip, kamailio, chromium, valgrind) when missing
	@missing=""; for c in $(SYS_PKGS); do command -v $$c >/dev/null || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages for:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng sox sip-tester baresip-core kamailio chromium chromium-driver valgrind >/dev/null; \
	fi

# The hot call-path modules compiled with mypyc into build/native/<python>/ (about 15 % less CPU
# per call); a no-op while the build matches the source. A failed build is not an error: the
# server then runs the Python source (telephony_agent/native.py).
native: $(VENV)/.serve ## Compile the hot call-path modules with mypyc, and the detector's C twin (build/native/; AGENT_NATIVE=off runs the source)
	-@$(VENV)/bin/python scripts/build_native.py

native313: $(VENV313)/.installed
	-@$(VENV313)/bin/python scripts/build_native.py

run: $(VENV)/.serve native ## Serve calls (offline local engine when no provider key is set)
	@echo "make run: SIP trunk too? set AGENT_SIP_PORT=5060 and AGENT_SIP_ALLOWED_SOURCES=<trunk CIDRs> (README: SIP trunk)"
	@if [ -z "$$TWILIO_AUTH_TOKEN" ] && ! grep -qs '^TWILIO_AUTH_TOKEN=.' .env; then \
	  echo "make run: no TWILIO_AUTH_TOKEN, so serving for local development only:"; \
	  echo "  on 127.0.0.1, Twilio signature checks off (try: .venv/bin/telephony-agent call --say 'hello')"; \
	  echo "  talk to the agent from your browser: http://127.0.0.1:$${AGENT_PORT:-8080}/softphone"; \
	  AGENT_HOST=127.0.0.1 AGENT_TWILIO_VALIDATE=false $(VENV)/bin/telephony-agent serve; \
	else \
	  $(VENV)/bin/telephony-agent serve; \
	fi

# The external-peer interop tests (marker `peers`: sipp, pjsua2, baresip, kamailio, Chromium) run no
# version-specific code of ours: `make test` runs each once, on the Python its marker names, which
# also evens out the two runs; so do the benchmark tools' own tests (marker `once`). `make test311` /
# `make test313` alone run everything (PEERS=all).
PEERS ?= all
# Worker processes per Python (pytest-xdist): most tests wait on calls played in real time, so 2 per
# Python (4 in `make test`) halve the time on 2 cores. Tests marked `xdist_group` (the local engine's
# whole calls, heavy on the CPU) run in one worker, one after the other. TEST_WORKERS=0: one process.
# 3 per Python took 4:57 / 5:12 against 6:08 / 6:30 (2026-12-04), but a CI run on a clean clone then
# failed: a recognition took over 15 s while the benchmark smoke tests held both cores.
TEST_WORKERS ?= 2
PYTEST_ARGS = -q --durations=15 $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadgroup)

test: system-deps ## Run the test suite on Python 3.11 and 3.13 (side by side, TEST_WORKERS=2 processes each: the tests mostly wait on real-time audio)
	@$(MAKE) --no-print-directory -j2 --output-sync=target test311 test313 PEERS=split

test311: $(VENV)/.installed native lint
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS) --peers=$(if $(filter split,$(PEERS)),3.11,$(PEERS))

lint: $(VENV)/.installed ## ruff and mypy (strict on telephony_codecs, telephony/ and realtime/); part of `make test`
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test313: $(VENV313)/.installed native313
	$(VENV313)/bin/python -m pytest $(PYTEST_ARGS) --peers=$(if $(filter split,$(PEERS)),3.13,$(PEERS))

bench-codecs: $(VENV)/.installed ## Codec benchmark: StreamResampler vs soxr vs audioop.ratecv
	$(VENV)/bin/python bench/codecs.py

bench-softphone: $(VENV)/.installed system-deps ## Softphone microphone: mu-law in the page vs PCM to the server (CPU, bytes)
	$(VENV)/bin/python bench/softphone_mic.py --write

bench-load: $(VENV)/.installed native ## Load benchmark: concurrent calls through the bridge; CPU per call against a minimal alternative bridge and a bare-protocol floor; 1 and 2 workers
	$(VENV)/bin/python bench/load.py

bench-rss: $(VENV)/.installed native ## Memory benchmark: server RSS over 10,000 sequential calls, RSS per call, asyncio vs uvloop (ARGS=--calls 2000)
	$(VENV)/bin/python bench/rss.py $(ARGS)

bench-sip: $(VENV)/.installed native system-deps ## SIP load benchmark: sipp calls with audio, calls per core, RTP jitter (+ Twilio: ARGS=--twilio)
	$(VENV)/bin/python bench/sip_load.py $(ARGS)

bench-transcript: $(VENV)/.installed ## Word error rate of `telephony-agent call`'s agent transcript
	$(VENV)/bin/python bench/transcript_wer.py

bench-turns: $(VENV)/.installed native ## Turn-taking benchmark: barge-in reaction time, false interruptions, VAD CPU
	$(VENV)/bin/python bench/turns.py --sweep

clean: ## Remove the virtualenvs and caches
	rm -rf $(VENV) $(VENV313) .pytest_cache .hypothesis
