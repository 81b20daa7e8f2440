//! Just enough DER to find a certificate's public key and an RSA key's modulus and exponent.

/// One TLV element: its tag and contents.
struct Element<'a> {
    tag: u8,
    contents: &'a [u8],
}

/// Reads the element at the start of `input`; returns it and the rest.
fn read(input: &[u8]) -> Option<(Element<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (len_bytes, after) = rest.split_at(count);
        rest = after;
        len_bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return None;
    }
    let (contents, rest) = rest.split_at(len);
    Some((Element { tag, contents }, rest))
}

/// The DER `SubjectPublicKeyInfo` of an X.509 certificate (the bytes, tag and length included).
pub(crate) fn certificate_spki(cert_der: &[u8]) -> Option<&[u8]> {
    let (cert, _) = read(cert_der)?;
    let (tbs, _) = read(cert.contents)?;
    let mut rest = tbs.contents;
    // version [0] EXPLICIT is optional; then serial, signature, issuer, validity, subject.
    let (first, after) = read(rest)?;
    rest = if first.tag == 0xa0 { after } else { rest };
    for _ in 0..5 {
        rest = read(rest)?.1;
    }
    let (spki, after) = read(rest)?;
    if spki.tag != 0x30 {
        return None;
    }
    Some(&rest[..rest.len() - after.len()])
}

/// Modulus and exponent of a PKCS#1 `RSAPublicKey`, without leading zero bytes.
pub(crate) fn rsa_components(pkcs1: &[u8]) -> Option<(&[u8], &[u8])> {
    let (seq, _) = read(pkcs1)?;
    let (n, rest) = read(seq.contents)?;
    let (e, _) = read(rest)?;
    let trim = |b: &[u8]| -> usize { b.iter().take_while(|x| **x == 0).count() };
    Some((&n.contents[trim(n.contents)..], &e.contents[trim(e.contents)..]))
}
