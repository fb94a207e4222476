package inference

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/gradeline/gradeline/bus"
)

// checkDigest says, naming what (e.g. `image object "x"`), when data is not
// what the event's sha256 (hex, any case) describes.
func checkDigest(what string, data []byte, want string) error {
	sum := sha256.Sum256(data)
	if got := hex.EncodeToString(sum[:]); !strings.EqualFold(got, want) {
		return fmt.Errorf("%s has sha256 %s, the event says %s", what, got, want)
	}
	return nil
}

// errTooLarge marks an object over MaxImageBytes.
var errTooLarge = errors.New("image object too large")

// objectReader reads image objects. ObjectStore.Get creates and deletes a
// consumer per object, which costs more than grading a small image; the
// chunks of an object are plain messages of the bucket's stream (NATS
// ADR-20: subject $O.<bucket>.C.<nuid>), so they are read with direct gets
// instead, one round trip per 128 KiB chunk. Get remains the fallback.
type objectReader struct {
	store  jetstream.ObjectStore
	stream jetstream.Stream // nil: use store.Get
}

func newObjectReader(ctx context.Context, js jetstream.JetStream, store jetstream.ObjectStore) *objectReader {
	r := &objectReader{store: store}
	if s, err := js.Stream(ctx, "OBJ_"+bus.ImageBucket); err == nil && s.CachedInfo().Config.AllowDirect {
		r.stream = s
	}
	return r
}

// read returns the bytes of the object called name. A missing object
// wraps jetstream.ErrObjectNotFound; one over limit wraps errTooLarge.
func (r *objectReader) read(ctx context.Context, name string, limit int64) ([]byte, error) {
	info, err := r.store.GetInfo(ctx, name)
	if err != nil {
		return nil, err
	}
	if info.Size > uint64(limit) {
		return nil, fmt.Errorf("%w: %d bytes, the limit is %d", errTooLarge, info.Size, limit)
	}
	if r.stream == nil || (info.Opts != nil && info.Opts.Link != nil) {
		return r.get(ctx, name, int(info.Size))
	}
	data := make([]byte, 0, info.Size)
	subject := fmt.Sprintf("$O.%s.C.%s", bus.ImageBucket, info.NUID)
	seq := uint64(1)
	for range info.Chunks {
		m, err := r.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				return nil, fmt.Errorf("%w: a chunk is missing (deleted meanwhile?)", jetstream.ErrObjectNotFound)
			}
			return nil, err
		}
		data = append(data, m.Data...)
		seq = m.Sequence + 1
	}
	if uint64(len(data)) != info.Size {
		return nil, fmt.Errorf("%w: object has %d bytes, its info says %d", jetstream.ErrDigestMismatch, len(data), info.Size)
	}
	return data, nil
}

func (r *objectReader) get(ctx context.Context, name string, size int) ([]byte, error) {
	obj, err := r.store.Get(ctx, name)
	if err != nil {
		return nil, err
	}
	defer obj.Close()
	data := make([]byte, 0, size)
	buf := make([]byte, 32<<10)
	for {
		n, err := obj.Read(buf)
		data = append(data, buf[:n]...)
		if err == io.EOF {
			return data, nil
		}
		if err != nil {
			return nil, err
		}
	}
}
