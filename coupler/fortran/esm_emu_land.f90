!> The esm-emu land emulator as a component for a Fortran model, through FTorch.
!>
!> The export folder of `esm-emu export RUN_DIR --ftorch --out DIR` holds emulator.pt (TorchScript)
!> and manifest.txt (the names, CTSM units and shapes it was exported with). A component:
!>
!>   call emu_land_init(land, 'DIR/manifest.txt', static, theta, rc, msg)  ! load, check, state = 0
!>   do each coupling interval
!>     call emu_land_run(land, forcing, responses, rc, msg)              ! state carried
!>   end do
!>   call emu_land_finalize(land)
!>
!> Arrays have the shapes of the tensors (FTorch's default layout, no transposes):
!>   static(gridcell, n_static), theta(gridcell, n_param)        in the manifest's order
!>   forcing(gridcell, days, n_forcing)                             daily means, CTSM units
!>   responses(gridcell, days, n_response)                          daily means, CTSM units
!> The routines never stop the program: rc /= 0 comes back with a one-line message (rc = 2 for
!> input that does not fit the manifest), so a host model can call its own endrun.
module esm_emu_land
  use, intrinsic :: iso_fortran_env, only : real32, int64
  use, intrinsic :: ieee_arithmetic, only : ieee_is_finite
  use ftorch, only : torch_model, torch_tensor, torch_kCPU, torch_model_load, torch_model_forward, &
                     torch_tensor_from_array, torch_delete
  implicit none
  private

  integer, parameter, public :: EMU_NAME_LEN = 64, EMU_UNITS_LEN = 64, EMU_LONG_LEN = 256
  integer, parameter, public :: EMU_PATH_LEN = 4096, EMU_MSG_LEN = 2048
  character(len=*), parameter :: FORMAT_NAME = 'esm_emu.ftorch', FORMAT_VERSION = '1'

  !> One named field: CTSM name, units, long_name.
  type, public :: emu_field
    character(len=EMU_NAME_LEN) :: name = ''
    character(len=EMU_UNITS_LEN) :: units = ''
    character(len=EMU_LONG_LEN) :: long_name = ''
  end type emu_field

  !> What manifest.txt says about the exported model.
  type, public :: emu_manifest
    character(len=EMU_PATH_LEN) :: path = ''
    character(len=EMU_PATH_LEN) :: model_path = ''
    integer(int64) :: model_bytes = -1
    integer :: n_state = 0
    type(emu_field), allocatable :: forcing(:), static(:), param(:), response(:)
  end type emu_manifest

  !> The component: the model, its fixed inputs and the carried state.
  type, public :: emu_land
    type(emu_manifest) :: manifest
    type(torch_model) :: model
    integer :: n_gridcell = 0
    real(real32), allocatable :: static(:,:), theta(:,:)
    real(real32), allocatable :: state(:,:), new_state(:,:)
    logical :: initialized = .false.
    integer :: intervals = 0
    integer(int64) :: days = 0
    integer :: device_type = 0, device_index = -1
  end type emu_land

  public :: emu_manifest_read, emu_land_init, emu_land_run, emu_land_finalize

contains

  !> Split `line` at tabs into at most size(parts) parts; n = the number found.
  subroutine split_tabs(line, parts, n)
    character(len=*), intent(in) :: line
    character(len=*), intent(out) :: parts(:)
    integer, intent(out) :: n
    integer :: start, k, last
    parts = ''
    n = 0
    last = len_trim(line)
    if (last == 0) return
    n = 1
    start = 1
    do k = 1, last
      if (line(k:k) == achar(9)) then
        if (n <= size(parts)) parts(n) = line(start:k - 1)
        n = n + 1
        start = k + 1
      end if
    end do
    if (n <= size(parts)) parts(n) = line(start:last)
    n = min(n, size(parts))
  end subroutine split_tabs

  !> The folder of `path` with a trailing '/', or '' for a bare file name.
  function folder_of(path) result(folder)
    character(len=*), intent(in) :: path
    character(len=:), allocatable :: folder
    integer :: k
    k = index(trim(path), '/', back=.true.)
    folder = path(1:k)
  end function folder_of

  !> Read and check manifest.txt: its format, the model file beside it (present, of the recorded
  !> size), the state width and the four field lists.
  subroutine emu_manifest_read(path, man, rc, msg)
    character(len=*), intent(in) :: path
    type(emu_manifest), intent(out) :: man
    integer, intent(out) :: rc
    character(len=*), intent(out) :: msg
    character(len=4096) :: line
    character(len=EMU_LONG_LEN) :: parts(3)
    integer :: u, ios, n, lineno, stage, count, i
    integer(int64) :: size_on_disk
    logical :: there
    character(len=*), parameter :: sections(4) = [character(len=8) :: 'forcing', 'static', 'param', 'response']

    rc = 2
    msg = ''
    man%path = path
    open(newunit=u, file=trim(path), status='old', action='read', iostat=ios)
    if (ios /= 0) then
      msg = trim(path) // ': cannot be opened (the manifest.txt of an esm-emu --ftorch export)'
      return
    end if
    lineno = 0
    stage = 0   ! 0 format, 1 model, 2 model_bytes, 3 state, 4..7 sections, 8 end
    do
      read(u, '(a)', iostat=ios) line
      if (ios /= 0) exit
      lineno = lineno + 1
      if (len_trim(line) == 0 .or. line(1:1) == '#') cycle
      call split_tabs(line, parts, n)
      select case (stage)
      case (0)
        if (trim(parts(1)) /= 'format' .or. trim(parts(2)) /= FORMAT_NAME .or. trim(parts(3)) /= FORMAT_VERSION) then
          write(msg, '(a,i0,a)') trim(path) // ':', lineno, ': not an esm-emu FTorch manifest (expected "format' // &
            achar(9) // FORMAT_NAME // achar(9) // FORMAT_VERSION // '")'
          exit
        end if
      case (1)
        if (trim(parts(1)) /= 'model' .or. len_trim(parts(2)) == 0 .or. index(parts(2), '/') > 0) then
          write(msg, '(a,i0,a)') trim(path) // ':', lineno, ': expected "model<TAB>FILE" (a file beside the manifest)'
          exit
        end if
        man%model_path = folder_of(path) // trim(parts(2))
      case (2)
        read(parts(2), *, iostat=ios) man%model_bytes
        if (trim(parts(1)) /= 'model_bytes' .or. ios /= 0) then
          write(msg, '(a,i0,a)') trim(path) // ':', lineno, ': expected "model_bytes<TAB>N"'
          exit
        end if
      case (3)
        read(parts(2), *, iostat=ios) man%n_state
        if (trim(parts(1)) /= 'state' .or. ios /= 0 .or. man%n_state < 0) then
          write(msg, '(a,i0,a)') trim(path) // ':', lineno, ': expected "state<TAB>N" (the state width)'
          exit
        end if
      case (4:7)
        read(parts(2), *, iostat=ios) count
        if (trim(parts(1)) /= trim(sections(stage - 3)) .or. ios /= 0 .or. count < 0) then
          write(msg, '(a,i0,a)') trim(path) // ':', lineno, ': expected "' // trim(sections(stage - 3)) // &
            '<TAB>N" (the number of fields)'
          exit
        end if
        if (.not. read_fields(count)) exit
      case (8)
        if (trim(parts(1)) /= 'end') then
          write(msg, '(a,i0,a)') trim(path) // ':', lineno, ': expected "end"'
          exit
        end if
        stage = 9
        exit
      end select
      stage = stage + 1
    end do
    close(u)
    if (len_trim(msg) > 0) return
    if (stage /= 9) then
      msg = trim(path) // ': ends before its "end" line (an incomplete manifest)'
      return
    end if
    inquire(file=trim(man%model_path), exist=there, size=size_on_disk)
    if (.not. there) then
      msg = trim(man%model_path) // ': the model named by ' // trim(path) // ' is missing'
      return
    end if
    if (size_on_disk /= man%model_bytes) then
      write(msg, '(a,i0,a,i0,a)') trim(man%model_path) // ': has ', size_on_disk, ' bytes, but ' // trim(path) // &
        ' was written for a model of ', man%model_bytes, ' bytes (export the folder again)'
      return
    end if
    rc = 0

  contains

    logical function read_fields(nf) result(ok)
      integer, intent(in) :: nf
      type(emu_field), allocatable :: f(:)
      ok = .false.
      allocate(f(nf))
      do i = 1, nf
        read(u, '(a)', iostat=ios) line
        lineno = lineno + 1
        if (ios /= 0) then
          msg = trim(path) // ': ends inside its ' // trim(sections(stage - 3)) // ' list'
          return
        end if
        call split_tabs(line, parts, n)
        if (len_trim(parts(1)) == 0 .or. len_trim(parts(1)) > EMU_NAME_LEN .or. len_trim(parts(2)) > EMU_UNITS_LEN) then
          write(msg, '(a,i0,a,i0,a,i0,a)') trim(path) // ':', lineno, ': expected "NAME<TAB>UNITS<TAB>LONG_NAME" (a name of 1 to ', &
            EMU_NAME_LEN, ' characters, units of at most ', EMU_UNITS_LEN, ')'
          return
        end if
        f(i)%name = parts(1)(1:EMU_NAME_LEN)
        f(i)%units = parts(2)(1:EMU_UNITS_LEN)
        f(i)%long_name = parts(3)
      end do
      select case (stage)
      case (4)
        call move_alloc(f, man%forcing)
      case (5)
        call move_alloc(f, man%static)
      case (6)
        call move_alloc(f, man%param)
      case default
        call move_alloc(f, man%response)
      end select
      ok = .true.
    end function read_fields

  end subroutine emu_manifest_read

  !> Load the model named by the manifest and fix the static fields and parameters of every
  !> gridcell; the state starts at zeros. With device_type (FTorch's torch_kCUDA, ...) and
  !> device_index the model runs there: inputs are copied to the device each call and the
  !> responses and state copied back into the Fortran arrays (FTorch built with -DGPU_DEVICE=...).
  subroutine emu_land_init(self, manifest_path, static, theta, rc, msg, device_type, device_index)
    type(emu_land), intent(inout), target :: self
    character(len=*), intent(in) :: manifest_path
    real(real32), intent(in) :: static(:,:), theta(:,:)
    integer, intent(out) :: rc
    character(len=*), intent(out) :: msg
    integer, intent(in), optional :: device_type, device_index
    integer :: g, k

    call emu_land_finalize(self)
    call emu_manifest_read(manifest_path, self%manifest, rc, msg)
    if (rc /= 0) return
    rc = 2
    associate (man => self%manifest)
      if (size(static, 2) /= size(man%static) .or. size(theta, 2) /= size(man%param) .or. &
          size(theta, 1) /= size(static, 1)) then
        write(msg, '(a,4(i0,a))') 'emu_land_init: static is (', size(static, 1), ', ', size(static, 2), &
          ') and theta (', size(theta, 1), ', ', size(theta, 2), '); ' // trim(manifest_path) // ' expects (gridcell, ' &
          // itoa(size(man%static)) // ') and (gridcell, ' // itoa(size(man%param)) // ')'
        return
      end if
      do k = 1, size(man%static)
        do g = 1, size(static, 1)
          if (.not. ieee_is_finite(static(g, k))) then
            msg = 'emu_land_init: static field ' // trim(man%static(k)%name) // ' is not finite at gridcell ' // itoa(g)
            return
          end if
        end do
      end do
      do k = 1, size(man%param)
        do g = 1, size(theta, 1)
          if (.not. ieee_is_finite(theta(g, k))) then
            msg = 'emu_land_init: parameter ' // trim(man%param(k)%name) // ' is not finite at gridcell ' // itoa(g)
            return
          end if
        end do
      end do
      self%n_gridcell = size(static, 1)
      allocate(self%static(self%n_gridcell, size(man%static)), source=static)
      allocate(self%theta(self%n_gridcell, size(man%param)), source=theta)
      allocate(self%state(self%n_gridcell, man%n_state), source=0.0_real32)
      allocate(self%new_state(self%n_gridcell, man%n_state), source=0.0_real32)
      self%device_type = torch_kCPU
      if (present(device_type)) self%device_type = device_type
      self%device_index = -1
      if (self%device_type /= torch_kCPU) self%device_index = 0
      if (present(device_index)) self%device_index = device_index
      call torch_model_load(self%model, trim(man%model_path), self%device_type, self%device_index)
    end associate
    self%intervals = 0
    self%days = 0
    self%initialized = .true.
    rc = 0
  end subroutine emu_land_init

  !> One coupling interval: daily forcing for every gridcell in, daily responses out, the state
  !> carried to the next call.
  subroutine emu_land_run(self, forcing, responses, rc, msg)
    type(emu_land), intent(inout), target :: self
    real(real32), intent(in), target, contiguous :: forcing(:,:,:)
    real(real32), intent(inout), target, contiguous :: responses(:,:,:)
    integer, intent(out) :: rc
    character(len=*), intent(out) :: msg
    type(torch_tensor) :: inputs(4), outputs(2)
    integer :: g, d, k

    rc = 2
    msg = ''
    if (.not. self%initialized) then
      msg = 'emu_land_run: called before emu_land_init'
      return
    end if
    if (size(forcing, 1) /= self%n_gridcell .or. size(forcing, 3) /= size(self%manifest%forcing) .or. &
        any(shape(responses) /= [self%n_gridcell, size(forcing, 2), size(self%manifest%response)])) then
      write(msg, '(a,6(i0,a))') 'emu_land_run: forcing is (', size(forcing, 1), ', ', size(forcing, 2), ', ', &
        size(forcing, 3), ') and responses (', size(responses, 1), ', ', size(responses, 2), ', ', size(responses, 3), &
        '); expected (gridcell=' // itoa(self%n_gridcell) // ', days, ' // itoa(size(self%manifest%forcing)) // &
        ') and (gridcell, days, ' // itoa(size(self%manifest%response)) // ')'
      return
    end if
    do k = 1, size(forcing, 3)
      do d = 1, size(forcing, 2)
        do g = 1, size(forcing, 1)
          if (.not. ieee_is_finite(forcing(g, d, k))) then
            msg = 'emu_land_run: forcing ' // trim(self%manifest%forcing(k)%name) // ' is not finite at gridcell ' // &
              itoa(g) // ', day ' // itoa(d) // ' of interval ' // itoa(self%intervals + 1)
            return
          end if
        end do
      end do
    end do
    if (size(forcing, 2) > 0) then
      call torch_tensor_from_array(inputs(1), forcing, self%device_type, self%device_index)
      call torch_tensor_from_array(inputs(2), self%static, self%device_type, self%device_index)
      call torch_tensor_from_array(inputs(3), self%theta, self%device_type, self%device_index)
      call torch_tensor_from_array(inputs(4), self%state, self%device_type, self%device_index)
      call torch_tensor_from_array(outputs(1), responses, torch_kCPU)
      call torch_tensor_from_array(outputs(2), self%new_state, torch_kCPU)
      call torch_model_forward(self%model, inputs, outputs)
      call torch_delete(inputs)
      call torch_delete(outputs)
      self%state = self%new_state
    end if
    self%intervals = self%intervals + 1
    self%days = self%days + size(forcing, 2)
    rc = 0
  end subroutine emu_land_run

  !> Release the model and the arrays (safe to call twice, or before init).
  subroutine emu_land_finalize(self)
    type(emu_land), intent(inout) :: self
    if (self%initialized) call torch_delete(self%model)
    if (allocated(self%static)) deallocate(self%static)
    if (allocated(self%theta)) deallocate(self%theta)
    if (allocated(self%state)) deallocate(self%state)
    if (allocated(self%new_state)) deallocate(self%new_state)
    self%initialized = .false.
    self%n_gridcell = 0
  end subroutine emu_land_finalize

  function itoa(i) result(s)
    integer, intent(in) :: i
    character(len=:), allocatable :: s
    character(len=24) :: buf
    write(buf, '(i0)') i
    s = trim(buf)
  end function itoa

end module esm_emu_land
