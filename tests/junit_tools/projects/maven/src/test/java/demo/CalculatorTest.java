package demo;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import org.junit.jupiter.api.Disabled;
import org.junit.jupiter.api.Nested;
import org.junit.jupiter.api.Test;

class CalculatorTest {
    @Test
    void adds() {
        assertEquals(4, 2 + 2);
    }

    @Test
    void subtractsWrongly() {
        assertEquals(1, 3 - 1, "three minus one");
    }

    @Test
    void throwsUnexpectedly() {
        throw new IllegalStateException("no calculator here");
    }

    @Test
    @Disabled("waiting for the new API")
    void disabledForNow() {
    }

    @Test
    void assumedAway() {
        assumeTrue(false, "only on the build farm");
    }

    /** Fails on its first try and passes on Surefire's rerun: a flaky test. */
    @Test
    void flakyOnce() throws IOException {
        Path marker = Path.of("target", "flaky-once.marker");
        if (!Files.exists(marker)) {
            Files.writeString(marker, "first try");
            assertEquals("second try", "first try", "fails the first time only");
        }
    }

    @Nested
    class Division {
        @Test
        void dividesByTwo() {
            assertEquals(2, 4 / 2);
        }
    }
}
