package enroll

// Secrets seals the Wi-Fi passphrases kept in the inventory and opens them
// again (seal.Sealer implements it). A nil Secrets keeps them in clear.
type Secrets interface {
	Seal(plain string) (string, error)
	Open(sealed string) (string, error)
}

func seal(s Secrets, v string) (string, error) {
	if s == nil || v == "" {
		return v, nil
	}
	return s.Seal(v)
}

func open(s Secrets, v string) (string, error) {
	if s == nil || v == "" {
		return v, nil
	}
	return s.Open(v)
}
