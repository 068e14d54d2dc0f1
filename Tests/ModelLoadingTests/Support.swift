import Foundation
import TestSupport

let tinySD1 = repositoryURL.appendingPathComponent("Fixtures/tiny-sd1/tiny-sd1.safetensors").path
let tinySDXL = repositoryURL.appendingPathComponent("Fixtures/tiny-sdxl/tiny-sdxl.safetensors").path
