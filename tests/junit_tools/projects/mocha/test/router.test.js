// mocha + mocha-junit-reporter: without includePending its report drops pending tests
// from the testcases but not from its totals.
const assert = require('node:assert');

describe('Router', function () {
  it('matches a plain path', function () {
    assert.strictEqual('/a'.length, 2);
  });
  it('matches a parameter', function () {
    assert.strictEqual('/users/:id'.split('/').length, 4);
  });
  it.skip('matches a regular expression', function () {});
  it('decodes the path');
});
