package inference

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
)

// modelState keeps the registry's unloaded models in step with the model
// state bucket (bus.ModelStateBucket): the repository API writes it, and
// every replica applies it at start and as it changes, so an unload is
// not forgotten by a restart and replicas agree on it.
type modelState struct {
	kv  jetstream.KeyValue
	reg *Registry
	log *slog.Logger
}

// openModelState finds the bucket (made by `gradeline setup`), unloads the
// models it names, and watches it until ctx ends. It returns once the
// bucket's state at start is applied, before the service serves anything.
func openModelState(ctx context.Context, js jetstream.JetStream, reg *Registry, log *slog.Logger) (*modelState, error) {
	kv, err := bus.ModelStateStore(ctx, js)
	if err != nil {
		return nil, fmt.Errorf("inference: %w", err)
	}
	st := &modelState{kv: kv, reg: reg, log: log}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return nil, fmt.Errorf("inference: watch %s: %w", bus.ModelStateBucket, err)
	}
	// The current values come first, then a nil entry.
	for e := range w.Updates() {
		if e == nil {
			break
		}
		st.apply(e, true)
	}
	go func() {
		defer func() { _ = w.Stop() }()
		for {
			select {
			case <-ctx.Done():
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e != nil {
					st.apply(e, false)
				}
			}
		}
	}()
	return st, nil
}

// apply brings the registry to one entry of the bucket: an unloaded model
// is unloaded; a deleted entry (a load elsewhere) loads the model again if
// this replica has it unloaded. At start only unloads matter.
func (st *modelState) apply(e jetstream.KeyValueEntry, start bool) {
	name := e.Key()
	switch {
	case e.Operation() == jetstream.KeyValuePut && string(e.Value()) == bus.ModelStateUnloaded:
		if st.reg.Unloaded(name) {
			return
		}
		if err := st.reg.Unload(name); err != nil && !errors.Is(err, ErrUnknownModel) {
			st.log.Warn("model state: unload", "model", name, "err", err)
		}
	case start:
	case e.Operation() == jetstream.KeyValueDelete || e.Operation() == jetstream.KeyValuePurge:
		if !st.reg.Unloaded(name) {
			return
		}
		if err := st.reg.Load(name); err != nil {
			st.log.Warn("model state: load", "model", name, "err", err)
		}
	}
}

// unload stops serving the model here and remembers it for every replica.
// A model already unloaded (by the bucket's watcher, for a request another
// replica answered first) is no error.
func (st *modelState) unload(ctx context.Context, name string) error {
	if err := st.reg.Unload(name); err != nil && !st.reg.Unloaded(name) {
		return err
	}
	if _, err := st.kv.PutString(ctx, name, bus.ModelStateUnloaded); err != nil {
		return &bus.Error{Code: bus.CodeUnavailable, Message: fmt.Sprintf("model %s unloaded on this replica, but not remembered: %v", name, err)}
	}
	return nil
}

// load forgets the unload for every replica, then serves the model here.
func (st *modelState) load(ctx context.Context, name string) error {
	if err := st.kv.Delete(ctx, name); err != nil {
		return &bus.Error{Code: bus.CodeUnavailable, Message: fmt.Sprintf("model %s: the model state cannot be changed: %v", name, err)}
	}
	return st.reg.Load(name)
}
