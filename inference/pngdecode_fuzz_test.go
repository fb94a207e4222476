package inference

import "testing"

// FuzzPNGDecodeAgrees: for any bytes, the fast PNG decoder returns exactly
// image/png's image, or declines, or refuses a file image/png refuses too;
// decodeImage returns image/png's image or error; nothing panics.
func FuzzPNGDecodeAgrees(f *testing.F) {
	// Small files only: mutating a 224×224 image is slow and finds nothing
	// its smaller versions do not.
	for _, p := range append(craftedPNGs(f), encodedPNGs(f)...) {
		if len(p.data) <= 4<<10 {
			f.Add(p.data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checkPNGAgrees(t, data)
	})
}
