//! SMART App Launch v2 system scopes (`system/<Type|*>.<permissions>`), the FHIR access of a
//! backend service: their grammar, permissions and containment. One family of
//! [`Scope`](super::Scope).

use std::fmt;

use super::SYSTEM_PREFIX;

/// Longest FHIR resource type name a system scope may name.
const MAX_RESOURCE_TYPE_BYTES: usize = 64;

/// Why a `system/` scope token breaks the SMART App Launch grammar
/// (`system/<Type|*>.<permissions>`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SystemScopeError {
    /// The token does not start with `system/`.
    #[error("a system scope starts with `{SYSTEM_PREFIX}`")]
    MissingPrefix,
    /// No `.` between the resource type and the permissions.
    #[error("no permissions: write `system/<Type|*>.<permissions>`, e.g. `system/Encounter.rs`")]
    MissingPermissions,
    /// A resource type that is not shaped like a FHIR resource type name.
    #[error(
        "`{found}` is not a FHIR resource type: write the name as FHIR spells it, an upper-case \
         letter then up to 63 letters (e.g. `Encounter`), or `*` for every type"
    )]
    ResourceType {
        /// The resource type found.
        found: String,
    },
    /// SMART scope parameters (`?category=...`) after the permissions.
    #[error("SMART scope parameters (`?{found}`) are not supported")]
    Parameters {
        /// The parameters found, after the `?`.
        found: String,
    },
    /// Nothing after the `.`.
    #[error(
        "the permissions after `.` are empty: use SMART v2 letters from `cruds` (e.g. `rs`), or \
         v1 `read` or `write`"
    )]
    EmptyPermissions,
    /// The SMART v1 `*` permission.
    #[error(
        "the SMART v1 permission `*` is not supported: write `cruds` for all five, or `read` or \
         `write`"
    )]
    StarPermission,
    /// A letter that is not one of `c r u d s`.
    #[error(
        "{found:?} is not a SMART permission: use SMART v2 letters from `cruds` (e.g. `rs`), or \
         v1 `read` or `write`"
    )]
    PermissionLetter {
        /// The character found.
        found: char,
    },
    /// SMART v2 letters out of order or repeated (`sr`, `rr`).
    #[error(
        "permissions `{found}` are out of order: SMART v2 writes each of c, r, u, d, s at most \
         once, in that order (`{ordered}`)"
    )]
    PermissionOrder {
        /// The permissions as written.
        found: String,
        /// The same set in SMART v2 order.
        ordered: String,
    },
}

/// A set of SMART v2 permissions on FHIR resources: create, read, update, delete, search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Permissions(pub(super) u8);

impl Permissions {
    /// `c`: create.
    pub const CREATE: Permissions = Permissions(1);
    /// `r`: read.
    pub const READ: Permissions = Permissions(1 << 1);
    /// `u`: update.
    pub const UPDATE: Permissions = Permissions(1 << 2);
    /// `d`: delete.
    pub const DELETE: Permissions = Permissions(1 << 3);
    /// `s`: search.
    pub const SEARCH: Permissions = Permissions(1 << 4);
    /// `cruds`: all five.
    pub const ALL: Permissions = Permissions(0b1_1111);
    /// What SMART v1 `read` grants: `rs`.
    pub const V1_READ: Permissions = Permissions(Self::READ.0 | Self::SEARCH.0);
    /// What SMART v1 `write` grants: `cud`.
    pub const V1_WRITE: Permissions = Permissions(Self::CREATE.0 | Self::UPDATE.0 | Self::DELETE.0);

    /// The letters in SMART v2 order.
    pub(super) const LETTERS: [(char, Permissions); 5] = [
        ('c', Self::CREATE),
        ('r', Self::READ),
        ('u', Self::UPDATE),
        ('d', Self::DELETE),
        ('s', Self::SEARCH),
    ];

    /// True when every permission of `other` is in `self`.
    pub const fn contains(self, other: Permissions) -> bool {
        self.0 & other.0 == other.0
    }

    /// The permissions of both.
    pub const fn union(self, other: Permissions) -> Permissions {
        Permissions(self.0 | other.0)
    }

    /// True when there is no permission at all.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Reads SMART v2 letters, which must be in the order `c r u d s`, each at most once.
    fn from_letters(letters: &str) -> Result<Permissions, SystemScopeError> {
        let mut set = Permissions(0);
        let mut in_order = true;
        let mut last = None;
        for found in letters.chars() {
            let position = Self::LETTERS
                .iter()
                .position(|(c, _)| *c == found)
                .ok_or(SystemScopeError::PermissionLetter { found })?;
            in_order &= last.is_none_or(|l| position > l);
            last = Some(position);
            set = set.union(Self::LETTERS[position].1);
        }
        if set.is_empty() {
            return Err(SystemScopeError::EmptyPermissions);
        }
        if !in_order {
            return Err(SystemScopeError::PermissionOrder {
                found: letters.to_owned(),
                ordered: set.to_string(),
            });
        }
        Ok(set)
    }
}

impl fmt::Display for Permissions {
    /// The SMART v2 letters, in order (`rs`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (c, p) in Self::LETTERS {
            if self.contains(p) {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// How the permissions of a [`SystemScope`] were written, so it prints as it came.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Spelling {
    /// SMART v2 letters (`rs`).
    Letters,
    /// SMART v1 `read`.
    Read,
    /// SMART v1 `write`.
    Write,
}

/// A SMART App Launch system scope: `system/<Type|*>.<permissions>`, the FHIR access of a
/// backend service.
///
/// The resource type is a FHIR resource type name (`[A-Z][A-Za-z]{0,63}`) or `*` for every
/// type; the permissions are SMART v2 letters (a non-empty subset of `cruds`, in that order)
/// or SMART v1 `read` (= `rs`) or `write` (= `cud`). SMART scope parameters (`?category=...`)
/// are not supported.
///
/// Containment ([`SystemScope::covers`]): `system/*.X` covers `system/T.Y` and `system/*.Y`,
/// and `system/T.X` covers `system/T.Y`, whenever the permissions Y are a subset of X. The v1
/// and v2 spellings compare by their permissions: `system/Encounter.read` and
/// `system/Encounter.rs` cover each other.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SystemScope {
    /// The FHIR resource type; `None` is `*`, every type.
    resource_type: Option<Box<str>>,
    permissions: Permissions,
    spelling: Spelling,
}

impl SystemScope {
    /// Parses a whole token such as `system/Encounter.rs`.
    ///
    /// # Errors
    /// A [`SystemScopeError`] naming what breaks the grammar.
    pub fn parse(token: &str) -> Result<SystemScope, SystemScopeError> {
        let rest = token
            .strip_prefix(SYSTEM_PREFIX)
            .ok_or(SystemScopeError::MissingPrefix)?;
        let (resource, permissions) = rest
            .split_once('.')
            .ok_or(SystemScopeError::MissingPermissions)?;
        let resource_type = if resource == "*" {
            None
        } else if is_resource_type(resource) {
            Some(resource.into())
        } else {
            return Err(SystemScopeError::ResourceType {
                found: resource.to_owned(),
            });
        };
        if let Some((_, parameters)) = permissions.split_once('?') {
            return Err(SystemScopeError::Parameters {
                found: parameters.to_owned(),
            });
        }
        let (permissions, spelling) = match permissions {
            "read" => (Permissions::V1_READ, Spelling::Read),
            "write" => (Permissions::V1_WRITE, Spelling::Write),
            "*" => return Err(SystemScopeError::StarPermission),
            letters => (Permissions::from_letters(letters)?, Spelling::Letters),
        };
        Ok(SystemScope {
            resource_type,
            permissions,
            spelling,
        })
    }

    /// The FHIR resource type, or `None` for `*` (every type).
    pub fn resource_type(&self) -> Option<&str> {
        self.resource_type.as_deref()
    }

    /// The permissions granted, whichever way they were written.
    pub fn permissions(&self) -> Permissions {
        self.permissions
    }

    /// True when holding `self` grants everything that `other` grants: the same type or `*`,
    /// and a superset of the permissions.
    pub fn covers(&self, other: &SystemScope) -> bool {
        let types = match (&self.resource_type, &other.resource_type) {
            (None, _) => true,
            (Some(mine), Some(theirs)) => mine == theirs,
            (Some(_), None) => false,
        };
        types && self.permissions.contains(other.permissions)
    }
}

impl fmt::Display for SystemScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SYSTEM_PREFIX)?;
        f.write_str(self.resource_type.as_deref().unwrap_or("*"))?;
        match self.spelling {
            Spelling::Read => f.write_str(".read"),
            Spelling::Write => f.write_str(".write"),
            Spelling::Letters => write!(f, ".{}", self.permissions),
        }
    }
}

/// `[A-Z][A-Za-z]{0,63}`: the shape of a FHIR resource type name.
fn is_resource_type(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_uppercase())
        && bytes.all(|b| b.is_ascii_alphabetic())
        && s.len() <= MAX_RESOURCE_TYPE_BYTES
}
