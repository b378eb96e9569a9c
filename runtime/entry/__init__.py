"""The hosted entry node: a mesh member that serves no model by default and gates the OpenAI API
behind bearer keys, with keys, usage and limits kept in the mesh (JetStream key-value buckets) so that
several entry nodes behind one load balancer act as one. See docs/entry.md."""
