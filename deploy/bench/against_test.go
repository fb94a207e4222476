package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gradeline/gradeline/deploy/internal/fixture"
)

// BenchmarkAgainst measures images graded/s at 32 clients (wrk, the grade
// row of make bench) of this tree's stack against an earlier revision's
// (GRADELINE_BENCH_AGAINST: any git revision, `make bench-against
// REV=...`), each built as its revision's `make build` builds it and run
// as shipped. The two run in alternating rounds, each round on a fresh
// data directory, so "N times the throughput of then" is measured on one
// machine in one sitting: this machine's speed swings by a third within
// minutes, and a figure from another day is no baseline.
func BenchmarkAgainst(b *testing.B) {
	rev := os.Getenv("GRADELINE_BENCH_AGAINST")
	if rev == "" {
		b.Skip("GRADELINE_BENCH_AGAINST names the revision to measure against (make bench-against REV=...)")
	}
	if err := requireTools(); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	root, out := benchDirs(b)
	out = filepath.Join(out, "against")
	if err := os.RemoveAll(out); err != nil {
		b.Fatal(err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		b.Fatal(err)
	}
	then, err := buildRevision(ctx, root, out, rev)
	if err != nil {
		b.Fatal(err)
	}
	now, err := buildLocal(ctx, root, out)
	if err != nil {
		b.Fatal(err)
	}
	form, ctype := gradeForm(fixture.DigitPNGSize(3, 28))
	d := time.Duration(envInt("GRADELINE_BENCH_GRADE_SECONDS", 5)) * time.Second
	rounds := envInt("GRADELINE_BENCH_ROUNDS", 3)
	sides := []struct {
		name, bin string
		rates     []float64
	}{{"then (" + rev + ")", then, nil}, {"now", now, nil}}
	b.ResetTimer()
	for r := range rounds {
		// Who goes first alternates, so neither always meets a warmer machine.
		for k := range sides {
			s := &sides[(k+r)%2]
			rate, err := gradeRound(ctx, s.bin, filepath.Join(out, fmt.Sprintf("round%d-%d", r+1, (k+r)%2)), form, ctype, d)
			if err != nil {
				b.Fatalf("%s, round %d: %v", s.name, r+1, err)
			}
			s.rates = append(s.rates, rate)
			fmt.Printf("  round %d, %s: %.0f images graded/s at 32 clients\n", r+1, s.name, rate)
		}
	}
	was, is := median(sides[0].rates), median(sides[1].rates)
	summary := fmt.Sprintf("images graded/s at 32 clients (wrk -t2 -c32, %v rounds of %v, medians, each round on a fresh data directory): %s %s, now %s: %.2f times\n",
		rounds, d, sides[0].name, rate(was), rate(is), is/was)
	fmt.Print(summary)
	if err := os.WriteFile(filepath.Join(out, "against.txt"), []byte(summary), 0o644); err != nil {
		b.Fatal(err)
	}
}

// buildRevision builds rev's gradeline-local into out with rev's own
// `make build` (its build tags and flags), in a detached worktree that
// shares this tree's .cache, and returns the binary's path.
func buildRevision(ctx context.Context, root, out, rev string) (string, error) {
	wt := filepath.Join(out, "worktree")
	git := func(args ...string) error {
		cmd := exec.CommandContext(ctx, "git", append([]string{"-C", root}, args...)...)
		if msg, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("git %s: %w\n%s", strings.Join(args, " "), err, msg)
		}
		return nil
	}
	if err := git("worktree", "add", "--detach", "--force", wt, rev); err != nil {
		return "", err
	}
	defer func() { _ = git("worktree", "remove", "--force", wt) }()
	if err := os.Symlink(filepath.Join(root, ".cache"), filepath.Join(wt, ".cache")); err != nil {
		return "", err
	}
	fmt.Printf("  building %s with its make build\n", rev)
	cmd := exec.CommandContext(ctx, "make", "-C", wt, "build")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("make build of %s: %w\n%s", rev, err, msg)
	}
	bin := filepath.Join(out, "gradeline-local-"+strings.NewReplacer("/", "-", "~", "-", "^", "-").Replace(rev))
	return bin, os.Rename(filepath.Join(wt, "bin", "gradeline-local"), bin)
}

// gradeRound starts bin on a fresh data directory under dir, measures it
// with gradeLoad and stops it.
func gradeRound(ctx context.Context, bin, dir string, form []byte, ctype string, d time.Duration) (float64, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	p, _, err := startBinary(bin, filepath.Join(dir, "data"), filepath.Join(dir, "stack.log"))
	if err != nil {
		return 0, err
	}
	rate, err := gradeLoad(ctx, p.st.ep.HTTP, dir, form, ctype, d)
	if serr := p.st.stop(); err == nil && serr != nil {
		err = fmt.Errorf("stop: %w", serr)
	}
	return rate, err
}

// gradeLoad registers a user at base, warms the grade path up for 3
// seconds (dde4cf2 still answered some requests 202 after one) and returns the 200 answers per second of wrk posting form for d.
func gradeLoad(ctx context.Context, base, dir string, form []byte, ctype string, d time.Duration) (float64, error) {
	tok, err := register(base)
	if err != nil {
		return 0, err
	}
	url, l := base+"/api/v1/grades", wrkLoad{name: "grade", token: tok, ctype: ctype, body: form}
	if _, err := runWrk32(ctx, dir, url, l, 3*time.Second); err != nil { // warm-up
		return 0, err
	}
	w, err := runWrk32(ctx, dir, url, l, d)
	if err != nil {
		return 0, err
	}
	return w.rate200(), nil
}
