// jest.retryTimes: the first try fails, the retry passes.
jest.retryTimes(2);
let tries = 0;
test('passes on the second try', () => {
  tries += 1;
  expect(tries).toBe(2);
});
