//! A guard around bincode's serde deserializer for bytes from the network (G8).
//!
//! bincode is not self-describing and trusts the lengths it reads, which leaves two ways for a
//! small, hostile frame to hurt the node that decodes it:
//!
//! * **Allocation before validation.** bincode decodes an owned `String` (or byte buffer) by
//!   reading its length, allocating that many bytes, and only then copying from the input: a
//!   20-byte frame claiming a 60 MiB string makes the decoder allocate 60 MiB before it notices
//!   the input is short. The guard turns every `deserialize_string` into `deserialize_str` (and
//!   `deserialize_byte_buf` into `deserialize_bytes`): bincode then borrows the bytes from the
//!   input, which fails on a short input *before* anything is allocated, and the visitor copies
//!   exactly the bytes that are there. Sequences are safe already: serde's `Vec` preallocates at
//!   most 1 MiB whatever length is claimed, then grows only as elements actually decode.
//! * **Unbounded recursion.** A recursive message type (`enum Tree { Leaf, Node(Box<Tree>) }`)
//!   decodes one level per input byte, so an 8 MiB frame could recurse eight million levels and
//!   overflow the stack, which aborts the whole node. The guard counts nesting (sequences, maps,
//!   enums, options, newtypes) and fails the decode at [`MAX_DEPTH`].
//!
//! The guard forwards everything else unchanged, so a value decodes exactly as it would without
//! it (the codec tests and the fuzz targets check round trips through it).

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor};

/// The deepest nesting a decoded value may have. Ample for any message a behaviour declares
/// (JSON-like documents included); small enough that decoding stays far inside a tokio
/// worker's 2 MiB stack.
pub const MAX_DEPTH: u32 = 128;

/// Decodes a `T` through the guard (used as the seed of `bincode::serde::seed_decode_from_slice`).
pub(crate) struct Guarded<T>(pub(crate) std::marker::PhantomData<T>);

impl<'de, T: de::Deserialize<'de>> DeserializeSeed<'de> for Guarded<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<T, D::Error> {
        T::deserialize(Guard { de, depth: 0 })
    }
}

/// The guarded deserializer at a given nesting depth.
struct Guard<D> {
    de: D,
    depth: u32,
}

/// The guarded visitor: counts a level when it is handed a compound value.
struct Visit<V> {
    v: V,
    depth: u32,
}

impl<V> Visit<V> {
    /// The depth of the compound value being entered, or an error past [`MAX_DEPTH`].
    fn enter<E: de::Error>(&self) -> Result<u32, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(format_args!("value nested deeper than {MAX_DEPTH} levels")));
        }
        Ok(self.depth + 1)
    }
}

/// A guarded seed: whatever it deserializes goes through a [`Guard`] at `depth`.
struct Seed<S> {
    seed: S,
    depth: u32,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Guard { de, depth: self.depth })
    }
}

macro_rules! forward {
    ($($method:ident),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
            self.de.$method(Visit { v, depth: self.depth })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Guard<D> {
    type Error = D::Error;

    forward!(
        deserialize_any,
        deserialize_bool,
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f32,
        deserialize_f64,
        deserialize_char,
        deserialize_str,
        deserialize_bytes,
        deserialize_option,
        deserialize_unit,
        deserialize_seq,
        deserialize_map,
        deserialize_identifier,
        deserialize_ignored_any,
    );

    /// Borrowed, so a claimed length is checked against the input before any allocation.
    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
        self.de.deserialize_str(Visit { v, depth: self.depth })
    }

    /// Borrowed, for the same reason as strings.
    fn deserialize_byte_buf<V: Visitor<'de>>(self, v: V) -> Result<V::Value, D::Error> {
        self.de.deserialize_bytes(Visit { v, depth: self.depth })
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, v: V) -> Result<V::Value, D::Error> {
        self.de.deserialize_unit_struct(name, Visit { v, depth: self.depth })
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, v: V) -> Result<V::Value, D::Error> {
        self.de.deserialize_newtype_struct(name, Visit { v, depth: self.depth })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, D::Error> {
        self.de.deserialize_tuple(len, Visit { v, depth: self.depth })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_tuple_struct(name, len, Visit { v, depth: self.depth })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_struct(name, fields, Visit { v, depth: self.depth })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, D::Error> {
        self.de.deserialize_enum(name, variants, Visit { v, depth: self.depth })
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: de::Error>(self, x: $ty) -> Result<V::Value, E> {
            self.v.$method(x)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Visit<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.v.expecting(f)
    }

    forward_visit!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.v.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.v.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        let depth = self.enter()?;
        self.v.visit_some(Guard { de, depth })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        let depth = self.enter()?;
        self.v.visit_newtype_struct(Guard { de, depth })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let depth = self.enter()?;
        self.v.visit_seq(Access { a: seq, depth })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        let depth = self.enter()?;
        self.v.visit_map(Access { a: map, depth })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        let depth = self.enter()?;
        self.v.visit_enum(Access { a: data, depth })
    }
}

/// A guarded sequence, map, enum or variant access: every element goes through a [`Guard`].
struct Access<A> {
    a: A,
    depth: u32,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Access<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
        self.a.next_element_seed(Seed { seed, depth: self.depth })
    }

    fn size_hint(&self) -> Option<usize> {
        self.a.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Access<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        self.a.next_key_seed(Seed { seed, depth: self.depth })
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.a.next_value_seed(Seed { seed, depth: self.depth })
    }

    fn size_hint(&self) -> Option<usize> {
        self.a.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Access<A> {
    type Error = A::Error;
    type Variant = Access<A::Variant>;

    fn variant_seed<S: DeserializeSeed<'de>>(self, seed: S) -> Result<(S::Value, Self::Variant), A::Error> {
        let depth = self.depth;
        let (value, variant) = self.a.variant_seed(Seed { seed, depth })?;
        Ok((value, Access { a: variant, depth }))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Access<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.a.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        self.a.newtype_variant_seed(Seed { seed, depth: self.depth })
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, v: V) -> Result<V::Value, A::Error> {
        self.a.tuple_variant(len, Visit { v, depth: self.depth })
    }

    fn struct_variant<V: Visitor<'de>>(self, fields: &'static [&'static str], v: V) -> Result<V::Value, A::Error> {
        self.a.struct_variant(fields, Visit { v, depth: self.depth })
    }
}
