package inference

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
)

// Decoding costs what the pixels cost: a 7000×7000 16-bit PNG compresses
// to a few hundred KB and decodes to 400 MB. A model needs its input size,
// so each model decodes at most a budget of pixels (input.max_pixels in
// model.yaml; by default DecodeBudgetFactor × its input, never less than
// MinDecodeBudget), and no model more than the absolute cap
// (GRADELINE_MAX_IMAGE_PIXELS, default DefaultMaxImagePixels). Images
// beyond are refused before any pixel is allocated, naming the limit.
const (
	DecodeBudgetFactor = 64
	// MinDecodeBudget keeps ordinary photographs gradable by small models
	// (a 28×28 model would otherwise refuse anything above 224×224).
	MinDecodeBudget = 4 << 20
	// DefaultMaxImagePixels is the absolute cap (16 MP).
	DefaultMaxImagePixels = 16 << 20
	// EnvMaxImagePixels overrides the absolute cap.
	EnvMaxImagePixels = "GRADELINE_MAX_IMAGE_PIXELS"
	// bigDecode is the size from which a decode takes a slot of bigDecodes.
	bigDecode = 1 << 20
)

// ErrTooLarge marks an image above the pixel budget; it wraps
// ErrUndecodable, so it is final (the same bytes never fit later).
var ErrTooLarge = fmt.Errorf("%w: too many pixels", ErrUndecodable)

// MaxImagePixels is the absolute cap in force (see EnvMaxImagePixels).
var MaxImagePixels = maxImagePixelsFromEnv()

// maxImagePixelsFromEnv is read when the package loads, since decoding
// needs it everywhere; ConfigFromEnv refuses a bad value at start, here it
// is warned about and ignored.
func maxImagePixelsFromEnv() int64 {
	v := os.Getenv(EnvMaxImagePixels)
	if v == "" {
		return DefaultMaxImagePixels
	}
	n, err := parseMaxImagePixels(v)
	if err != nil {
		slog.Warn("ignoring invalid "+EnvMaxImagePixels, "value", v, "default", DefaultMaxImagePixels)
		return DefaultMaxImagePixels
	}
	return n
}

func parseMaxImagePixels(v string) (int64, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 1 {
		return 0, errors.New("not a positive number of pixels")
	}
	return n, nil
}

// decodeBudget is the pixel budget of a model with input in.
func decodeBudget(in Input) int64 {
	b := in.MaxPixels
	if b <= 0 {
		b = max(int64(DecodeBudgetFactor)*int64(in.Width)*int64(in.Height), MinDecodeBudget)
	}
	return min(b, MaxImagePixels)
}

// bigDecodes bounds how many large images are decoded at once (half the
// cores, at least one), so memory stays bounded however many batches,
// models and requests run concurrently.
var bigDecodes = make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2))

func acquireDecode(pixels int64) func() {
	if pixels < bigDecode {
		return func() {}
	}
	bigDecodes <- struct{}{}
	return func() { <-bigDecodes }
}

// checkBudget refuses a w×h image above budget.
func checkBudget(format string, w, h int, budget int64) error {
	if int64(w)*int64(h) <= budget {
		return nil
	}
	return fmt.Errorf("%w: the %s is %dx%d (%d pixels), more than the limit of %d pixels this model decodes (input.max_pixels; absolute cap %s=%d)",
		ErrTooLarge, format, w, h, int64(w)*int64(h), budget, EnvMaxImagePixels, MaxImagePixels)
}

// IsTooLarge reports whether err is a refusal for size.
func IsTooLarge(err error) bool { return errors.Is(err, ErrTooLarge) }
