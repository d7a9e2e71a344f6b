# Krites: the commands a user touches. `make help` lists them.
SHELL := bash
CARGO ?= cargo
WASM_TARGET := wasm32-unknown-unknown
# Cargo profile of the shipped module (Cargo.toml: dependencies optimised for size).
WASM_PROFILE := wasm-release
WASM_BUILT := target/$(WASM_TARGET)/$(WASM_PROFILE)/krites_filter.wasm
WASM_OUT := wasm-out/krites.wasm
# Rust's wasm32 target emits these post-MVP features; V8 supports them all.
WASM_OPT_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
  --enable-nontrapping-float-to-int --enable-reference-types --enable-multivalue
export KRITES_ENVOY ?= $(CURDIR)/.venv/bin/envoy

# Where `make publish` pushes the module (a local registry by default).
PUBLISH_REF ?= 127.0.0.1:5000/krites/krites:$(shell git describe --tags --always 2>/dev/null || echo dev)
PUBLISH_ARGS ?= --plain-http

.PHONY: help setup build test test-native test-wasm lint demo bench bench-smoke publish control-static control-image clean fuzz fuzz-smoke

help:
	@echo "make setup   install the toolchain pieces (wasm target, Envoy, wasm-bindgen runner)"
	@echo "make build   build the filter: $(WASM_OUT) and its .sha256"
	@echo "make test    lint, unit tests, engine tests on wasm32, end-to-end tests in Envoy"
	@echo "make demo    play the YAO Bank tutorial: as root on the namespace mesh (pods as network namespaces,"
	@echo "             Istio's iptables interception, istiod-shaped sidecars), else in Envoys on 127.0.0.x"
	@echo "             (ARGS=--once to exit after; ARGS=--mesh or --loopback to choose)"
	@echo "make bench   load benchmark (baseline, rbac, ext_authz, krites in Envoy; BENCH_ARGS=--quick) and engine micro-benchmarks"
	@echo "make fuzz-smoke  replay each fuzz target's corpus, fuzz it $(FUZZ_SMOKE_SECONDS) s (part of make test)"
	@echo "make fuzz    fuzz each target $(FUZZ_SECONDS) s (FUZZ_SECONDS=..., FUZZ_TARGETS='selector config decide path')"
	@echo "make publish push the module as an OCI image Istio accepts, and the control image (PUBLISH_REF=host/repo:tag PUBLISH_ARGS=...)"
	@echo "make control-image  build control static (musl) and push it as a distroless-style image (CONTROL_IMAGE_REF=host/repo:tag)"

setup:
	@scripts/setup.sh

# The module keeps only the exports in filter/exports.txt (see there why):
# wasm-metadce drops the others, then wasm-opt the code they alone reached.
WASM_EXPORTS_GRAPH := target/krites-exports.json
# Envoy's V8 compiles every function with TurboFan before the first request
# (proxy-wasm-cpp-host turns Liftoff off), its memory grows faster than a
# function's size, and Envoy's allocator keeps what it freed. wasm-opt by
# default inlines every function into its only caller, which made one 46 KB
# configure function; bounding that keeps the module's functions small.
WASM_OPT_INLINING := --one-caller-inline-max-function-size=100

build:
	$(CARGO) build -p krites-filter --target $(WASM_TARGET) --profile $(WASM_PROFILE)
	@mkdir -p wasm-out
	@command -v wasm-opt >/dev/null && command -v wasm-metadce >/dev/null || \
	  { echo "wasm-opt and wasm-metadce are needed (Debian: binaryen; make setup installs it)"; exit 1; }
	@awk '!/^#/ && NF { n++; e[n] = $$1 } END { \
	  printf "[{\"name\":\"root\",\"root\":true,\"reaches\":["; \
	  for (i = 1; i <= n; i++) printf "%s\"e%d\"", (i > 1 ? "," : ""), i; printf "]}"; \
	  for (i = 1; i <= n; i++) printf ",{\"name\":\"e%d\",\"export\":\"%s\"}", i, e[i]; print "]" }' \
	  filter/exports.txt > $(WASM_EXPORTS_GRAPH)
	@wasm-metadce $(WASM_OPT_FEATURES) $(WASM_BUILT) --graph-file $(WASM_EXPORTS_GRAPH) -o $(WASM_OUT).trimmed >/dev/null
	wasm-opt -O3 $(WASM_OPT_FEATURES) $(WASM_OPT_INLINING) --strip-debug --strip-producers $(WASM_OUT).trimmed -o $(WASM_OUT)
	@rm -f $(WASM_OUT).trimmed
	@cd wasm-out && sha256sum krites.wasm > krites.wasm.sha256
	@echo "built $(WASM_OUT): $$(stat -c %s $(WASM_OUT)) bytes, sha256 $$(cut -d' ' -f1 wasm-out/krites.wasm.sha256)"

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p krites-filter -p krites-policy -p krites-config --target $(WASM_TARGET) -- -D warnings

# cargo test --workspace, in three lanes side by side (scripts/test-native.sh).
test-native: build
	CARGO="$(CARGO)" scripts/test-native.sh

# The engine's own test suite compiled to wasm32 and run under Node, so a
# 32-bit usize or the wasm build cannot hide a bug.
test-wasm:
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
	  $(CARGO) test -p krites-config -p krites-policy --target $(WASM_TARGET)

# cargo-fuzz targets in fuzz/ (selector parser, config compiler, decide(), path
# normalisation) on the stable toolchain; libFuzzer's summary per target.
FUZZ_SMOKE_SECONDS ?= 15
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?=
fuzz-smoke:
	RUSTC_BOOTSTRAP=1 fuzz/run.sh $(FUZZ_SMOKE_SECONDS) $(FUZZ_TARGETS)

fuzz:
	RUSTC_BOOTSTRAP=1 fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_TARGETS)

test: lint test-native test-wasm fuzz-smoke bench-smoke

demo:
	@scripts/setup.sh demo
	@$(MAKE) --no-print-directory build
	$(CARGO) run -q -p krites-testbed --bin krites-demo -- $(ARGS)

# The load benchmark (issue #5): baseline, Envoy RBAC, ext_authz and the Krites
# filter in real Envoys driven by h2load, then the engine's criterion benches.
# Results: target/krites-bench/latest.{txt,json,svg}. BENCH_ARGS=--quick for a
# short run; `krites-loadbench --help` for scales, configurations and load.
BENCH_ARGS ?=
LOADBENCH := target/release/krites-loadbench
bench: build
	$(CARGO) build --release -p krites-loadbench --bins
	$(LOADBENCH) $(BENCH_ARGS)
	$(CARGO) bench -p krites-bench

# CI's smoke run: two scales, one short round; fails if any configuration
# decides a request of the mix unlike the engine.
bench-smoke: build
	$(CARGO) build --release -p krites-loadbench --bins
	$(LOADBENCH) --quick --out target/krites-bench/smoke

# Pushes wasm-out/krites.wasm and the control image, reads both back with
# skopeo, and points the shipped manifests at the pushed digests: the
# WasmPlugins, and the control Deployment's --module-url/--sha256 and image:
# (lines edited in place, comments kept).
publish: build control-image
	@set -euo pipefail; out=$$($(CONTROL) publish $(WASM_OUT) $(PUBLISH_REF) $(PUBLISH_ARGS) \
	  --update-manifest istio-manifests/wasmplugin.yaml --update-deployment $(DEPLOYMENT)); echo "$$out"; \
	digest=$$(sed -n 's/^digest: //p' <<<"$$out"); \
	got=$$(skopeo inspect $(SKOPEO_ARGS) --raw docker://$(PUBLISH_REF) | sha256sum | cut -d' ' -f1); \
	[ "sha256:$$got" = "$$digest" ] || { echo "skopeo reads manifest sha256:$$got at $(PUBLISH_REF), control pushed $$digest" >&2; exit 1; }; \
	echo "skopeo: module manifest $$digest"

# The control binary, static (musl): the image has no libc.
MUSL_TARGET := x86_64-unknown-linux-musl
CONTROL_STATIC := $(or $(CARGO_TARGET_DIR),target)/$(MUSL_TARGET)/release/control
CONTROL_IMAGE_REF ?= $(dir $(PUBLISH_REF))krites-control:$(lastword $(subst :, ,$(PUBLISH_REF)))
CONTROL := $(CARGO) run -q -p krites-control --bin control --
DEPLOYMENT := istio-manifests/control/deployment.yaml
SKOPEO_ARGS ?= --tls-verify=false

control-static:
	CC_x86_64_unknown_linux_musl=musl-gcc $(CARGO) build --release -p krites-control --bin control --target $(MUSL_TARGET)
	@file -L $(CONTROL_STATIC) | grep -q 'statically linked\|static-pie linked' || { file -L $(CONTROL_STATIC); echo "$(CONTROL_STATIC) is not static" >&2; exit 1; }
	@echo "built $(CONTROL_STATIC): $$(stat -c %s $(CONTROL_STATIC)) bytes, $$(file -b -L $(CONTROL_STATIC) | grep -o 'static-pie linked\|statically linked')"

# Pushes the static control binary as a distroless-style image (one layer,
# user 65532, entrypoint /control) to CONTROL_IMAGE_REF, reads it back with
# skopeo (manifest digest, one layer, user, entrypoint) and pins the
# Deployment's image: to it by digest.
control-image: control-static
	@set -euo pipefail; out=$$($(CONTROL) publish-image $(CONTROL_STATIC) $(CONTROL_IMAGE_REF) $(PUBLISH_ARGS) \
	  --update-deployment $(DEPLOYMENT)); echo "$$out"; \
	digest=$$(sed -n 's/^digest: //p' <<<"$$out"); \
	got=$$(skopeo inspect $(SKOPEO_ARGS) --raw docker://$(CONTROL_IMAGE_REF) | sha256sum | cut -d' ' -f1); \
	[ "sha256:$$got" = "$$digest" ] || { echo "skopeo reads manifest sha256:$$got at $(CONTROL_IMAGE_REF), control pushed $$digest" >&2; exit 1; }; \
	skopeo inspect $(SKOPEO_ARGS) --config docker://$(CONTROL_IMAGE_REF) | python3 -c 'import json,sys; c=json.load(sys.stdin); \
	  cfg=c["config"]; ok=cfg.get("User")=="65532:65532" and cfg.get("Entrypoint")==["/control"] and len(c["rootfs"]["diff_ids"])==1 \
	    and (c["os"],c["architecture"])==("linux","amd64"); print("skopeo: user", cfg.get("User"), "entrypoint", cfg.get("Entrypoint"), "layers", len(c["rootfs"]["diff_ids"])); sys.exit(0 if ok else 1)'; \
	grep -q "image: $$(sed -n 's/^image: //p' <<<"$$out")\$$" $(DEPLOYMENT) && echo "$(DEPLOYMENT): image pinned to $$digest"

clean:
	$(CARGO) clean
	rm -f wasm-out/krites.wasm wasm-out/krites.wasm.sha256
