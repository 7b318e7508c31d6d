package calc

import (
	"os"
	"testing"
)

func TestAdd(t *testing.T) {
	if Add(2, 2) != 4 {
		t.Fatal("2+2")
	}
}

func TestSubtractWrongly(t *testing.T) {
	if Add(3, -1) != 1 {
		t.Errorf("three minus one: got %d", Add(3, -1))
	}
}

func TestSkipped(t *testing.T) {
	t.Skip("needs a GPU")
}

func TestTable(t *testing.T) {
	t.Run("positive", func(t *testing.T) {
		if Add(1, 1) != 2 {
			t.Fatal("1+1")
		}
	})
	t.Run("negative", func(t *testing.T) {
		if Add(-1, -1) != -3 {
			t.Fatal("-1 + -1 is not -3")
		}
	})
}

// TestFlaky fails while the marker file named by CALC_FLAKY_MARKER does not exist yet
// (and creates it): under gotestsum --rerun-fails it fails once, then passes.
func TestFlaky(t *testing.T) {
	marker := os.Getenv("CALC_FLAKY_MARKER")
	if marker == "" {
		return
	}
	if _, err := os.Stat(marker); err != nil {
		_ = os.WriteFile(marker, []byte("first try"), 0o644)
		t.Fatal("fails the first time only")
	}
}
