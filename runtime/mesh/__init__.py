"""The mesh over NATS: identity, signed announcements in a JetStream KV directory, routing, serving,
end-to-end encryption, and the private hub (an embedded nats-server) with invites and revocation.

See docs/mesh.md for the protocol."""
