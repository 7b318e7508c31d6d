<?php

use PHPUnit\Framework\TestCase;

final class CalcTest extends TestCase
{
    public function testAdds(): void
    {
        $this->assertSame(4, 2 + 2);
    }

    public function testSubtractsWrongly(): void
    {
        $this->assertSame(1, 3 - 1, 'three minus one');
    }

    public function testSkipped(): void
    {
        $this->markTestSkipped('needs a GPU');
    }

    public function testThrows(): void
    {
        throw new RuntimeException('no calculator here');
    }

    /** @dataProvider pairs */
    public function testSums(int $a, int $b, int $sum): void
    {
        $this->assertSame($sum, $a + $b);
    }

    public static function pairs(): array
    {
        return ['small' => [1, 1, 2], 'wrong' => [2, 2, 5]];
    }
}
