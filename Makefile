# WeightPack: the two commands of the README's quick start, and their helpers.
#   make run   install missing Debian packages, build release, run the main job on the tiny model
#   make test  install missing Debian packages, run the test suite (optimised build)

SHELL := /bin/bash
DEBIAN_PACKAGES := pkg-config libjson-c-dev libzstd-dev libssl-dev zlib1g-dev libopenblas-dev libpng-dev libdnnl-dev
RELEASE_BIN := .build/release/weightpack
MODEL := Fixtures/tiny-sd1/tiny-sd1.safetensors
CKPT := Fixtures/tiny-sd1/tiny-sd1.ckpt
OUT := out

.PHONY: run test deps build release clean format lint

deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" -ne 0 ] && SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

build: deps
	swift build

# The Swift runtime is linked statically: a self-contained binary that starts in milliseconds.
release: deps
	swift build -c release --static-swift-stdlib

run: release
	@mkdir -p $(OUT)
	@echo "== inspect $(MODEL): what model it is, and a few of its tensors"
	$(RELEASE_BIN) inspect $(MODEL) --filter 'cond_stage_model.transformer.text_model.encoder.layers.0.*'
	@echo "== convert to f16"
	$(RELEASE_BIN) convert $(MODEL) $(OUT)/tiny-sd1-f16.wpk --dtype f16 --force
	@echo "== convert, lossless and compressed, keeping the schedule buffers too"
	$(RELEASE_BIN) convert $(MODEL) $(OUT)/tiny-sd1-keep-zstd.wpk --compress --keep-extra --force
	@echo "== inspect the .wpk (statistics)"
	$(RELEASE_BIN) inspect $(OUT)/tiny-sd1-f16.wpk --stats --filter 'vae.decoder.conv_out.*'
	@echo "== check every checksum"
	$(RELEASE_BIN) check $(OUT)/tiny-sd1-f16.wpk
	$(RELEASE_BIN) check $(OUT)/tiny-sd1-keep-zstd.wpk
	@echo "== export back to safetensors and compare with the original, byte for byte"
	$(RELEASE_BIN) export $(OUT)/tiny-sd1-keep-zstd.wpk $(OUT)/tiny-sd1-roundtrip.safetensors --force
	cmp $(MODEL) $(OUT)/tiny-sd1-roundtrip.safetensors && echo "round trip: identical"
	@echo "== the same model as a diffusers folder, and what differs between it and the f16 file"
	$(RELEASE_BIN) export $(OUT)/tiny-sd1-f16.wpk $(OUT)/tiny-sd1-diffusers --layout diffusers --force
	-$(RELEASE_BIN) diff $(MODEL) $(OUT)/tiny-sd1-f16.wpk | tail -n 4
	@echo "== a PyTorch checkpoint: list its pickle's globals, then convert it (nothing is executed)"
	$(RELEASE_BIN) scan $(CKPT)
	$(RELEASE_BIN) convert $(CKPT) $(OUT)/tiny-sd1-from-ckpt.wpk --force
	@echo "== a malicious checkpoint is refused (exit 1 from scan is expected)"
	-$(RELEASE_BIN) scan Fixtures/torch/malicious/torch_zip_system.ckpt
	@echo "== verify the f16 conversion against the original with the reference engine (tables: per stage, then end to end)"
	$(RELEASE_BIN) verify $(MODEL) $(OUT)/tiny-sd1-f16.wpk --steps 6 --size 64 --scheduler ddim --report $(OUT)/verify-report
	@echo "== generate an image with the tiny model"
	$(RELEASE_BIN) generate $(MODEL) --prompt "a photo of an astronaut riding a horse" --steps 20 --size 64 --seed 42 -o $(OUT)/astronaut.png --force
	@echo "image: $(OUT)/astronaut.png; verify report: $(OUT)/verify-report/"

# Numeric tests are far faster optimised; the suite runs in release mode (with testability).
test: deps
	swift build -c release --build-tests -Xswiftc -enable-testing
	swift test -c release --skip-build -Xswiftc -enable-testing

# The committed .swift-format configuration (swift-format ships with the Swift toolchain).
FORMATTED := Sources Tests Benchmarks Fuzz Package.swift
format:
	swift format --configuration .swift-format -i -r $(FORMATTED)

lint:
	swift format lint --configuration .swift-format --strict -r $(FORMATTED)

clean:
	rm -rf .build $(OUT)
