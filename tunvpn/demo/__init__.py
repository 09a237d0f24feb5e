"""``tunvpn demo`` (:mod:`.tour`, three namespaces, with :mod:`.netns` and :mod:`.traffic`) and
``tunvpn demo-ike`` (:mod:`.ike`, two namespaces)."""
