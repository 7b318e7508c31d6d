// jest + jest-junit with its default options: names come out doubled ("res .json X" twice).
describe('res', () => {
  describe('.json(object)', () => {
    test('should send a json body', () => {
      expect(JSON.stringify({a: 1})).toBe('{"a":1}');
    });
    test('should set the content type', () => {
      expect('text/html').toBe('application/json');
    });
    test.skip('should honour the json spaces setting', () => {});
    test.todo('should escape html characters');
  });
});
