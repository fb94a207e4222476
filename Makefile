# gradeline: `make run` starts the local stack, `make test` runs every test.
# Both install what is missing first (see deploy/install/).
SHELL := /bin/bash
MODULES := bus ingest annotator inference analytics deploy deploy/manifests
CACHE := $(CURDIR)/.cache

export CGO_ENABLED := 1
export ONNXRUNTIME_LIB ?= $(CACHE)/onnxruntime/libonnxruntime.so.1
export GRADELINE_CHDB_LAUNCHER ?= $(CACHE)/chdb/gradeline-chdb
export GRADELINE_DATASETS_DIR ?= $(CACHE)/datasets
export GRADELINE_POSTGRES_BIN ?= $(CACHE)/postgresql/bin

TEST_FLAGS ?= -count=1 -timeout=25m
PKGS := $(addprefix ./,$(addsuffix /...,$(MODULES)))

.PHONY: install run test bench profile bench-against bench-scale vet fmt build clean-cache

## install: fetch ONNX Runtime, the ClickHouse engine and the datasets into .cache (idempotent)
install:
	@bash deploy/install/all.sh "$(CACHE)"

## run: the whole pipeline in one process with embedded NATS, FerretDB and ClickHouse
run: install
	go run ./deploy/cmd/gradeline-local

## test: every test of every module against the real embedded servers
test: install
	go vet $(PKGS)
	go test $(TEST_FLAGS) $(PKGS)

## bench: the stack as `make run` ships it, measured from outside (wrk, hey) against baselines of
## the same run (about 5 minutes); prints the table, writes .bench/results.md, regenerates the README's
bench: install
	@bash deploy/install/loadgen.sh
	GRADELINE_BENCH_README=1 go test -run='^$$' -bench='^BenchmarkStack$$' -benchtime=1x -timeout=30m ./deploy/bench/

## profile: CPU and allocation profiles of the stack under the annotation (wrk) and grade (hey)
## loads, into .bench/profile/ (see deploy/bench/profile_test.go)
profile: install
	@bash deploy/install/loadgen.sh
	go test -run='^$$' -bench='^BenchmarkProfile$$' -benchtime=1x -timeout=30m ./deploy/bench/

## bench-against: images graded/s at 32 clients of this tree against revision REV's, both as
## shipped, in alternating rounds (default REV: dde4cf2, the code of issue 13's 1,599/s)
REV ?= dde4cf2
bench-against: install
	@bash deploy/install/loadgen.sh
	GRADELINE_BENCH_AGAINST=$(REV) go test -run='^$$' -bench='^BenchmarkAgainst$$' -benchtime=1x -timeout=30m ./deploy/bench/

## bench-scale: the record store at a million records (about 15 minutes; GRADELINE_BENCH_SCALE=0.05 for 5%)
bench-scale: install
	go test -run='^$$' -bench='^BenchmarkScale$$' -benchtime=1x -timeout=60m ./deploy/bench/...

build:
	mkdir -p bin
	for m in ingest annotator inference analytics; do go build -o bin/$$m ./$$m/cmd/$$m || exit 1; done
	go build -o bin/gradeline-local ./deploy/cmd/gradeline-local

fmt:
	gofmt -w $(MODULES)

clean-cache:
	rm -rf $(CACHE)
