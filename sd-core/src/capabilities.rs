//! What a registry can carry and do: [`Capabilities`], declared by every backend.
//!
//! Swapping registries by URL only works if the application knows what the new registry
//! cannot do. Each [`Registry`](crate::Registry) declares its capabilities; applications can
//! ask at run time (`registry.capabilities().tags`), and the shared conformance suite in
//! `sd-testkit` checks every declared capability against the real server and reports loudly
//! what it skipped because a backend does not declare it. The table per backend is in
//! `docs/BACKENDS.md`.
//!
//! ```
//! use sd_core::Capabilities;
//! let caps = Capabilities::none().with_registration().with_tags().with_weight();
//! assert!(caps.registration && caps.tags && caps.weight);
//! assert!(!caps.expiry);
//! ```

/// The features of a registry backend. Built with [`Capabilities::none`] and the `with_*`
/// methods (the struct is `#[non_exhaustive]`, so new capabilities can be added later).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Capabilities {
    /// Instances can be registered through [`Registry::registrar`](crate::Registry::registrar).
    pub registration: bool,
    /// The id given at registration ([`Instance::id`](crate::Instance::id)) is the id
    /// instancers publish.
    pub ids: bool,
    /// A registration whose owner vanishes (stops heartbeating, loses its session or lease)
    /// is removed by the registry on its own: a TTL, a lease, a session, an eviction.
    pub expiry: bool,
    /// [`Instance::tags`](crate::Instance::tags) are stored and returned, and
    /// [`ServiceQuery::tag`](crate::ServiceQuery::tag) filters on them.
    pub tags: bool,
    /// [`Instance::meta`](crate::Instance::meta) is stored and returned.
    pub metadata: bool,
    /// [`Instance::weight`](crate::Instance::weight) is stored and returned.
    pub weight: bool,
    /// The registration's [`Instance::health`](crate::Instance::health) is what instancers
    /// see (passing, warning, critical), so
    /// [`ServiceQuery::passing_only`](crate::ServiceQuery::passing_only) can leave an
    /// instance out.
    pub health: bool,
    /// The registry filters by tag or health itself (less traffic); without it the backend
    /// filters client-side with the same result.
    pub server_side_filtering: bool,
    /// The registry can name the services it holds:
    /// [`Registry::services`](crate::Registry::services) answers instead of failing with
    /// [`Error::Unsupported`](crate::Error::Unsupported).
    pub list_services: bool,
}

impl Capabilities {
    /// Nothing declared.
    pub const fn none() -> Self {
        Capabilities {
            registration: false,
            ids: false,
            expiry: false,
            tags: false,
            metadata: false,
            weight: false,
            health: false,
            server_side_filtering: false,
            list_services: false,
        }
    }

    /// Every capability.
    pub const fn all() -> Self {
        Capabilities {
            registration: true,
            ids: true,
            expiry: true,
            tags: true,
            metadata: true,
            weight: true,
            health: true,
            server_side_filtering: true,
            list_services: true,
        }
    }

    /// Declares [`registration`](Self::registration).
    #[must_use]
    pub const fn with_registration(mut self) -> Self {
        self.registration = true;
        self
    }

    /// Declares [`ids`](Self::ids).
    #[must_use]
    pub const fn with_ids(mut self) -> Self {
        self.ids = true;
        self
    }

    /// Declares [`expiry`](Self::expiry).
    #[must_use]
    pub const fn with_expiry(mut self) -> Self {
        self.expiry = true;
        self
    }

    /// Declares [`tags`](Self::tags).
    #[must_use]
    pub const fn with_tags(mut self) -> Self {
        self.tags = true;
        self
    }

    /// Declares [`metadata`](Self::metadata).
    #[must_use]
    pub const fn with_metadata(mut self) -> Self {
        self.metadata = true;
        self
    }

    /// Declares [`weight`](Self::weight).
    #[must_use]
    pub const fn with_weight(mut self) -> Self {
        self.weight = true;
        self
    }

    /// Declares [`health`](Self::health).
    #[must_use]
    pub const fn with_health(mut self) -> Self {
        self.health = true;
        self
    }

    /// Declares [`server_side_filtering`](Self::server_side_filtering).
    #[must_use]
    pub const fn with_server_side_filtering(mut self) -> Self {
        self.server_side_filtering = true;
        self
    }

    /// Declares [`list_services`](Self::list_services).
    #[must_use]
    pub const fn with_list_services(mut self) -> Self {
        self.list_services = true;
        self
    }

    /// What both `self` and `other` can do: each capability is kept only when both declare
    /// it. A composed registry (`failover:`, `merge:`) declares what all its members can.
    #[must_use]
    pub const fn intersection(self, other: Capabilities) -> Self {
        Capabilities {
            registration: self.registration && other.registration,
            ids: self.ids && other.ids,
            expiry: self.expiry && other.expiry,
            tags: self.tags && other.tags,
            metadata: self.metadata && other.metadata,
            weight: self.weight && other.weight,
            health: self.health && other.health,
            server_side_filtering: self.server_side_filtering && other.server_side_filtering,
            list_services: self.list_services && other.list_services,
        }
    }
}
