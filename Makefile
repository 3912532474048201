# Plinth: `make run` starts a server with the embedded default setup; `make test` runs every check and test.
# Everything the project needs (Go modules, first-party plugins) is fetched or built here.

GO        ?= go
PLUGINS   := $(notdir $(wildcard plugins/*))
EMBED_DIR := host/defaults/plugins
DATA_DIR  ?= plinth-data
BIN       := bin/plinth
# Fuzz budgets are execution counts (a few seconds each on 2 cores), not durations: with a duration, Go
# 1.26's fuzz coordinator can report "context deadline exceeded" as a failure when the time runs out
# (golang/go#75804, fixed in Go 1.27).
FUZZTIME            ?= 100000x
FUZZTIME_INSTRUMENT ?= 12000x

.PHONY: all run build plugins test check unit fuzz bench eval clean

all: build

## plugins: build the first-party plugins (plugins/*) to Wasm, embedded by the binary's default setup
plugins: $(PLUGINS:%=$(EMBED_DIR)/%.wasm)

GUEST_SRC := $(shell find sdk abi -name '*.go' -not -name '*_test.go')

$(EMBED_DIR)/%.wasm: plugins/%/*.go $(GUEST_SRC)
	cd plugins/$* && GOOS=wasip1 GOARCH=wasm CGO_ENABLED=0 $(GO) build -buildmode=c-shared -buildvcs=false -trimpath -o ../../$@ .

## build: the plinth binary, with the first-party plugins embedded
build: plugins
	$(GO) build -buildvcs=false -o $(BIN) ./host/cmd/plinth

## run: start the server with the embedded default setup (demo tenant; its API key is printed)
run: build
	PLINTH_DATA_DIR=$${PLINTH_DATA_DIR:-$(DATA_DIR)} ./$(BIN) serve

## check: formatting, vet, tidy modules, wasip1 cross-builds, import rules
check:
	@echo "== gofmt"; out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@echo "== go mod tidy"; $(GO) mod tidy -diff
	@echo "== go vet"; $(GO) vet ./...
	@echo "== wasip1 builds (abi, sdk, plugins)"; GOOS=wasip1 GOARCH=wasm $(GO) build ./abi/... ./sdk/ ./sdk/rag ./plugins/...
	@GOOS=wasip1 GOARCH=wasm $(GO) vet ./abi/... ./sdk/ ./sdk/rag
	@echo "== import rules"; $(GO) test -count=1 -run TestLayout ./host/

## unit: all tests (plugins are built by the tests that need them)
unit: plugins
	$(GO) test -count=1 -timeout 20m ./...

## fuzz: a short run of every fuzz target beyond its seed corpus
fuzz:
	@for target in $$($(GO) test -list 'Fuzz.*' ./abi/ | grep ^Fuzz); do \
		echo "== $$target"; $(GO) test -run=^$$ -fuzz=^$$target$$ -fuzztime=$(FUZZTIME) ./abi/ || exit 1; done
	@for target in $$($(GO) test -list 'Fuzz.*' ./runtime/instrument/ | grep ^Fuzz); do \
		echo "== $$target"; $(GO) test -run=^$$ -fuzz=^$$target$$ -fuzztime=$(FUZZTIME_INSTRUMENT) ./runtime/instrument/ || exit 1; done

## test: everything CI runs
test: check unit fuzz

## bench: micro-benchmarks (hook calls, cold start, GC pauses with a looping guest, tight loops, KV
## through the ABI) and the end-to-end load table, whose last line is the hooks/bare ratio
bench: build
	$(GO) test -run=^$$ -bench='RouteHook|ColdStart' -benchtime=2s ./runtime/
	$(GO) test -run=^$$ -bench='DeadlineOvershoot' -benchtime=300x ./runtime/
	$(GO) test -run=^$$ -bench='GCPause' -benchtime=200x ./runtime/
	INSTRUMENT_TABLE=1 $(GO) test -run=TestTightLoopTable -v ./runtime/instrument/ | grep -v '^=== RUN'
	$(GO) test -run=^$$ -bench='Pipeline|KVThroughABI' -benchtime=2s ./host/server/
	$(GO) run ./host/cmd/plinth-bench -bin $(BIN)

clean:
	rm -rf bin $(EMBED_DIR)/*.wasm

## eval: ingest a BEIR dataset (EVAL_DIR, default ../shared/eval/scifact) through the API of an in-process
## server and print nDCG@10 and Recall@100 per search mode (EVAL_FLAGS: e.g. -hash-embedder, -embed-url)
EVAL_DIR ?= ../shared/eval/scifact
eval: build
	./$(BIN) eval -dir $(EVAL_DIR) $(EVAL_FLAGS)

## ingest: bulk-ingest JSONL files or directories (INGEST) into a vector store (STORE, or a new one named
## by CREATE) of a running server (PLINTH_URL, PLINTH_API_KEY)
.PHONY: ingest
ingest: build
	./$(BIN) ingest $(if $(STORE),-store $(STORE),-create $(or $(CREATE),ingest)) $(INGEST)
