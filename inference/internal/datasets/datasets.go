// Package datasets reads the real datasets Debian ships (fetched into
// $GRADELINE_DATASETS_DIR by deploy/install/datasets.sh) as 8-bit grey
// images, the form in which the service would receive them.
package datasets

import (
	"bufio"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"image"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Set is a labelled set of grey images of one size.
type Set struct {
	Width, Height int
	// Pixels holds one image per entry, Width*Height bytes, row by row,
	// 0 = black background.
	Pixels [][]byte
	Labels []int
}

// Len is the number of images.
func (s *Set) Len() int { return len(s.Labels) }

// Image returns image i as an *image.Gray.
func (s *Set) Image(i int) *image.Gray {
	return &image.Gray{Pix: s.Pixels[i], Stride: s.Width, Rect: image.Rect(0, 0, s.Width, s.Height)}
}

// FashionLabels are the Fashion-MNIST classes in label order.
var FashionLabels = []string{"t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"}

// DigitsLabels are the digit classes.
var DigitsLabels = []string{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"}

// Fashion reads Fashion-MNIST: the 60,000 training and 10,000 test images.
func Fashion(dir string) (train, test *Set, err error) {
	d := filepath.Join(dir, "fashion-mnist")
	if train, err = readIDX(filepath.Join(d, "train-images-idx3-ubyte.gz"), filepath.Join(d, "train-labels-idx1-ubyte.gz")); err != nil {
		return nil, nil, err
	}
	if test, err = readIDX(filepath.Join(d, "t10k-images-idx3-ubyte.gz"), filepath.Join(d, "t10k-labels-idx1-ubyte.gz")); err != nil {
		return nil, nil, err
	}
	return train, test, nil
}

func gunzip(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("datasets: %w (run `make install`)", err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		return nil, fmt.Errorf("datasets: %s: %w", path, err)
	}
	b, err := io.ReadAll(z)
	if err != nil {
		return nil, fmt.Errorf("datasets: %s: %w", path, err)
	}
	return b, nil
}

func readIDX(imagesPath, labelsPath string) (*Set, error) {
	img, err := gunzip(imagesPath)
	if err != nil {
		return nil, err
	}
	lab, err := gunzip(labelsPath)
	if err != nil {
		return nil, err
	}
	if len(img) < 16 || binary.BigEndian.Uint32(img) != 0x803 || len(lab) < 8 || binary.BigEndian.Uint32(lab) != 0x801 {
		return nil, fmt.Errorf("datasets: %s or %s is not an IDX file", imagesPath, labelsPath)
	}
	n := int(binary.BigEndian.Uint32(img[4:]))
	h, w := int(binary.BigEndian.Uint32(img[8:])), int(binary.BigEndian.Uint32(img[12:]))
	if int(binary.BigEndian.Uint32(lab[4:])) != n || len(img) != 16+n*w*h || len(lab) != 8+n {
		return nil, fmt.Errorf("datasets: %s and %s disagree on size", imagesPath, labelsPath)
	}
	s := &Set{Width: w, Height: h, Pixels: make([][]byte, n), Labels: make([]int, n)}
	for i := range n {
		s.Pixels[i] = img[16+i*w*h : 16+(i+1)*w*h : 16+(i+1)*w*h]
		s.Labels[i] = int(lab[8+i])
	}
	return s, nil
}

// The split of digits.csv.gz: every fifth row is held out for evaluation,
// a split anyone can reproduce.
const (
	DigitsTrainRows = "the 1,438 rows i of digits.csv.gz with i % 5 != 4"
	DigitsTestRows  = "the 359 held-out rows i of digits.csv.gz with i % 5 == 4"
)

// Digits reads scikit-learn's 8x8 digits (1,797 images, ink 0..16, scaled
// to 0..255) and splits it per DigitsTrainRows and DigitsTestRows.
func Digits(dir string) (train, test *Set, err error) {
	path := filepath.Join(dir, "sklearn", "digits.csv.gz")
	b, err := gunzip(path)
	if err != nil {
		return nil, nil, err
	}
	train = &Set{Width: 8, Height: 8}
	test = &Set{Width: 8, Height: 8}
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	i := 0
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		f := strings.Split(line, ",")
		if len(f) != 65 {
			return nil, nil, fmt.Errorf("datasets: %s line %d: %d fields, want 65", path, i+1, len(f))
		}
		px := make([]byte, 64)
		for j := range 64 {
			v, err := strconv.ParseFloat(f[j], 64)
			if err != nil || v < 0 || v > 16 {
				return nil, nil, fmt.Errorf("datasets: %s line %d: bad pixel %q", path, i+1, f[j])
			}
			px[j] = byte(math.Round(v * 255 / 16))
		}
		label, err := strconv.Atoi(f[64])
		if err != nil || label < 0 || label > 9 {
			return nil, nil, fmt.Errorf("datasets: %s line %d: bad label %q", path, i+1, f[64])
		}
		s := train
		if i%5 == 4 {
			s = test
		}
		s.Pixels = append(s.Pixels, px)
		s.Labels = append(s.Labels, label)
		i++
	}
	if err := sc.Err(); err != nil {
		return nil, nil, err
	}
	if i != 1797 {
		return nil, nil, fmt.Errorf("datasets: %s has %d rows, want 1797", path, i)
	}
	return train, test, nil
}

// Accuracy is the fraction of s that predict labels correctly, handing it
// the images in batches of at most batch.
func Accuracy(s *Set, batch int, predict func([]image.Image) ([]int, error)) (float64, error) {
	correct := 0
	for start := 0; start < s.Len(); start += batch {
		end := min(start+batch, s.Len())
		imgs := make([]image.Image, 0, end-start)
		for i := start; i < end; i++ {
			imgs = append(imgs, s.Image(i))
		}
		got, err := predict(imgs)
		if err != nil {
			return 0, err
		}
		if len(got) != len(imgs) {
			return 0, fmt.Errorf("datasets: %d predictions for %d images", len(got), len(imgs))
		}
		for j, g := range got {
			if g == s.Labels[start+j] {
				correct++
			}
		}
	}
	return float64(correct) / float64(s.Len()), nil
}
