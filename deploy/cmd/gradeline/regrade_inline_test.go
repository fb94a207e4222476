package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/gradeline/gradeline/bus"
	"github.com/gradeline/gradeline/deploy/internal/fixture"
)

// A submission whose image travelled inline (bus.MaxInlineImageBytes) is
// regraded from the IMAGES stream alone: its object name is in no bucket,
// and it is not counted gone.
func TestRegradeInlineImages(t *testing.T) {
	ctx := context.Background()
	js := regradeBus(t)
	png := fixture.DigitPNG(1)
	sum := sha256.Sum256(png)
	mustPublish(t, js, &bus.ImageSubmitted{Meta: bus.NewMeta(bus.TypeImageSubmitted), ImageID: "inline-1", Owner: "u", Model: "fashion",
		Image: bus.ImageRef{Object: "inline-1", SHA256: hex.EncodeToString(sum[:]), ContentType: "image/png", Size: int64(len(png)), Data: png}})
	var out bytes.Buffer
	if err := run(ctx, []string{"regrade", "--model", "fashion@1", "--since", "1h"}, &out, time.Now()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "1 submissions, 1 graded, 0 failed, 0 images gone") {
		t.Fatalf("output %q", out.String())
	}
}
