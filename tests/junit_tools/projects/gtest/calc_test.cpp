#include <gtest/gtest.h>
#include <stdexcept>

TEST(Calc, Adds) { EXPECT_EQ(4, 2 + 2); }

TEST(Calc, SubtractsWrongly) { EXPECT_EQ(1, 3 - 1) << "three minus one"; }

TEST(Calc, DISABLED_Divides) { EXPECT_EQ(2, 4 / 2); }

TEST(Calc, SkipsOnThisHost) { GTEST_SKIP() << "needs a GPU"; }

TEST(Calc, Throws) { throw std::runtime_error("no calculator here"); }
