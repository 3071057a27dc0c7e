package wire_test

import (
	"fmt"

	"github.com/provisiond/provisiond/transport/wire"
)

// A device builds its enrollment request once and sends it in either format;
// the CSR is DER bytes in CBOR and PEM text in JSON.
func ExampleMarshal() {
	req := wire.EnrollRequest{Serial: "TH1-01QGPS5FNZ", ClaimToken: "8Q3MZV0K6T4N2W1XJ7R5C9DFH0BYGSEA", CSR: []byte{0x30, 0x00}}
	j, _ := wire.Marshal(wire.JSON, req)
	fmt.Println(string(j))
	c, _ := wire.Marshal(wire.CBOR, req)
	fmt.Printf("%d bytes of CBOR, starting %x\n", len(c), c[:8])

	var back wire.EnrollRequest
	_ = wire.Unmarshal(wire.CBOR, c, &back)
	fmt.Println(back.Serial, len(back.CSR))
	// Output:
	// {"serial":"TH1-01QGPS5FNZ","claim_token":"8Q3MZV0K6T4N2W1XJ7R5C9DFH0BYGSEA","csr":"-----BEGIN CERTIFICATE REQUEST-----\nMAA=\n-----END CERTIFICATE REQUEST-----\n"}
	// 76 bytes of CBOR, starting a363637372423000
	// TH1-01QGPS5FNZ 2
}
