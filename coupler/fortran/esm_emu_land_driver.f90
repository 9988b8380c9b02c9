!> esm_emu_land_driver MANIFEST INPUT.nc OUTPUT.nc [INTERVAL_DAYS]
!>
!> Runs the esm-emu land emulator as a component (module esm_emu_land) over the daily forcing of
!> INPUT.nc, one coupling interval at a time with the state carried: calendar months of the
!> noleap calendar from 1 January (default), or INTERVAL_DAYS days. Writes the responses as a
!> daily CTSM 1-D history file (dims time, gridcell; CTSM names, units, long_names, time axis).
!>
!> INPUT.nc (esm_emu.export_ftorch.write_driver_input writes one):
!>   dims time (days from 1 January, noleap), gridcell
!>   <forcing>(time, gridcell) for each forcing of the manifest, daily means in its units
!>   <static>(gridcell) for each static field; <param>(gridcell) or scalar for each parameter
!>   optional: time (its "days since YYYY-..." gives the year), grid1d_lat/grid1d_lon (gridcell)
!>
!> Exit status 0 on success; 2 with one line on stderr naming the file, variable or value for
!> input that does not fit the manifest. The output is written under a temporary name beside
!> OUTPUT and renamed at the end; an input is never overwritten.
program esm_emu_land_driver
  use, intrinsic :: iso_fortran_env, only : real32, real64, int64, error_unit, output_unit
  use, intrinsic :: iso_c_binding, only : c_int, c_char, c_null_char, c_size_t, c_ptr, c_associated
  use, intrinsic :: ieee_arithmetic, only : ieee_is_finite
  use netcdf
  use esm_emu_land
  implicit none

  interface
    subroutine c_exit(status) bind(c, name='exit')
      import :: c_int
      integer(c_int), value :: status
    end subroutine c_exit
    integer(c_int) function c_rename(old, new) bind(c, name='rename')
      import :: c_int, c_char
      character(kind=c_char), intent(in) :: old(*), new(*)
    end function c_rename
    integer(c_int) function c_remove(path) bind(c, name='remove')
      import :: c_int, c_char
      character(kind=c_char), intent(in) :: path(*)
    end function c_remove
    type(c_ptr) function c_realpath(path, resolved) bind(c, name='realpath')
      import :: c_ptr, c_char
      character(kind=c_char), intent(in) :: path(*)
      character(kind=c_char), intent(out) :: resolved(*)
    end function c_realpath
    integer(c_int) function c_getpid() bind(c, name='getpid')
      import :: c_int
    end function c_getpid
    integer(c_int) function c_gethostname(name, length) bind(c, name='gethostname')
      import :: c_int, c_char, c_size_t
      character(kind=c_char), intent(out) :: name(*)
      integer(c_size_t), value :: length
    end function c_gethostname
  end interface

  real(real32), parameter :: SPVAL = 1.0e36_real32   ! CTSM's fill value
  integer, parameter :: MONTH_DAYS(12) = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]

  character(len=EMU_PATH_LEN) :: manifest_path, input_path, output_path, tmp_path, arg
  character(len=EMU_MSG_LEN) :: msg
  type(emu_manifest) :: man
  type(emu_land) :: land
  integer :: rc, ios, nargs, interval_days, ncin, ncout, dim_g, dim_t, n_g, n_t, k, d0, nd, month, i
  integer :: out_dim_t, out_dim_g, out_dim_hi, v_time, v_bounds, v_mcdate, v_mcsec, start_year
  integer, allocatable :: v_resp(:)
  real(real32), allocatable :: static(:,:), theta(:,:), col(:), slab(:,:)
  real(real32), allocatable, target :: forcing(:,:,:), responses(:,:,:)
  real(real64), allocatable :: lat(:), lon(:), tb(:,:)
  integer, allocatable :: mcdate(:)
  logical :: have_latlon, tmp_made
  integer(int64) :: t0, t1, t_run, t_first, rate
  integer :: first_days

  tmp_made = .false.
  nargs = command_argument_count()
  if (nargs < 3 .or. nargs > 4) then
    call fail('usage: esm_emu_land_driver MANIFEST INPUT.nc OUTPUT.nc [INTERVAL_DAYS] (default: calendar months)')
  end if
  call get_command_argument(1, manifest_path)
  call get_command_argument(2, input_path)
  call get_command_argument(3, output_path)
  interval_days = 0
  if (nargs == 4) then
    call get_command_argument(4, arg)
    read(arg, *, iostat=ios) interval_days
    if (ios /= 0 .or. interval_days < 1) call fail('INTERVAL_DAYS: ' // trim(arg) // ': expected a whole number of days >= 1')
  end if
  if (same_file(output_path, input_path) .or. same_file(output_path, manifest_path)) then
    call fail(trim(output_path) // ': refusing to overwrite an input file; choose another output path')
  end if

  call emu_manifest_read(manifest_path, man, rc, msg)
  if (rc /= 0) call fail(msg)

  ! ---- the input: dimensions, static fields, parameters, coordinates
  call nc(nf90_open(trim(input_path), NF90_NOWRITE, ncin), input_path, 'is not a readable netCDF file')
  call nc(nf90_inq_dimid(ncin, 'gridcell', dim_g), input_path, 'has no dimension "gridcell"')
  call nc(nf90_inq_dimid(ncin, 'time', dim_t), input_path, 'has no dimension "time" (days)')
  call nc(nf90_inquire_dimension(ncin, dim_g, len=n_g), input_path, 'gridcell')
  call nc(nf90_inquire_dimension(ncin, dim_t, len=n_t), input_path, 'time')
  if (n_g < 1) call fail(trim(input_path) // ': has no gridcells')
  start_year = read_start_year()
  allocate(static(n_g, size(man%static)), theta(n_g, size(man%param)), col(n_g))
  do k = 1, size(man%static)
    call read_gridcell_field(man%static(k), .false., col)
    static(:, k) = col
  end do
  do k = 1, size(man%param)
    call read_gridcell_field(man%param(k), .true., col)
    theta(:, k) = col
  end do
  do k = 1, size(man%forcing)
    call check_forcing_var(man%forcing(k))
  end do
  have_latlon = nf90_inq_varid(ncin, 'grid1d_lat', i) == NF90_NOERR .and. nf90_inq_varid(ncin, 'grid1d_lon', i) == NF90_NOERR
  if (have_latlon) then
    allocate(lat(n_g), lon(n_g))
    call nc(nf90_inq_varid(ncin, 'grid1d_lat', i), input_path, 'grid1d_lat')
    call nc(nf90_get_var(ncin, i, lat), input_path, 'grid1d_lat: cannot be read as (gridcell)')
    call nc(nf90_inq_varid(ncin, 'grid1d_lon', i), input_path, 'grid1d_lon')
    call nc(nf90_get_var(ncin, i, lon), input_path, 'grid1d_lon: cannot be read as (gridcell)')
  end if

  ! ---- the component
  call emu_land_init(land, manifest_path, static, theta, rc, msg)
  if (rc /= 0) call fail(msg)

  ! ---- the output: a CTSM daily 1-D history file, under a temporary name until complete
  tmp_path = temporary_name(output_path)
  call nc(nf90_create(trim(tmp_path), ior(NF90_NETCDF4, NF90_CLASSIC_MODEL), ncout), tmp_path, 'cannot be created')
  tmp_made = .true.
  call nc(nf90_def_dim(ncout, 'time', NF90_UNLIMITED, out_dim_t), tmp_path, 'time')
  call nc(nf90_def_dim(ncout, 'gridcell', n_g, out_dim_g), tmp_path, 'gridcell')
  call nc(nf90_def_dim(ncout, 'hist_interval', 2, out_dim_hi), tmp_path, 'hist_interval')
  call gatt('title', 'CLM History file information')
  call gatt('comment', 'NOTE: None of the variables are weighted by land fraction!')
  call gatt('Conventions', 'CF-1.0')
  call gatt('source', 'esm-emu land emulator through FTorch (esm_emu_land_driver; an emulator of CTSM, not CTSM)')
  call gatt('hostname', 'esm-emu')
  call gatt('time_period_freq', 'day_1')
  call gatt('esm_emu_manifest', trim(manifest_path))
  call gatt('esm_emu_forcing_file', trim(input_path))
  call nc(nf90_def_var(ncout, 'time', NF90_DOUBLE, [out_dim_t], v_time), tmp_path, 'time')
  call vatt(v_time, 'long_name', 'time')
  call vatt(v_time, 'units', 'days since ' // year4(start_year) // '-01-01 00:00:00')
  call vatt(v_time, 'calendar', 'noleap')
  call vatt(v_time, 'bounds', 'time_bounds')
  call nc(nf90_def_var(ncout, 'time_bounds', NF90_DOUBLE, [out_dim_hi, out_dim_t], v_bounds), tmp_path, 'time_bounds')
  call vatt(v_bounds, 'long_name', 'history time interval endpoints')
  call nc(nf90_def_var(ncout, 'mcdate', NF90_INT, [out_dim_t], v_mcdate), tmp_path, 'mcdate')
  call vatt(v_mcdate, 'long_name', 'current date (YYYYMMDD)')
  call nc(nf90_def_var(ncout, 'mcsec', NF90_INT, [out_dim_t], v_mcsec), tmp_path, 'mcsec')
  call vatt(v_mcsec, 'long_name', 'current seconds of current date')
  call vatt(v_mcsec, 'units', 's')
  if (have_latlon) then
    call nc(nf90_def_var(ncout, 'grid1d_lon', NF90_DOUBLE, [out_dim_g], i), tmp_path, 'grid1d_lon')
    call vatt(i, 'long_name', 'gridcell longitude')
    call vatt(i, 'units', 'degrees_east')
    call nc(nf90_def_var(ncout, 'grid1d_lat', NF90_DOUBLE, [out_dim_g], i), tmp_path, 'grid1d_lat')
    call vatt(i, 'long_name', 'gridcell latitude')
    call vatt(i, 'units', 'degrees_north')
  end if
  allocate(v_resp(size(man%response)))
  do k = 1, size(man%response)
    call nc(nf90_def_var(ncout, trim(man%response(k)%name), NF90_FLOAT, [out_dim_g, out_dim_t], v_resp(k)), &
            tmp_path, trim(man%response(k)%name))
    call nc(nf90_put_att(ncout, v_resp(k), '_FillValue', SPVAL), tmp_path, '_FillValue')
    call vatt(v_resp(k), 'long_name', trim(man%response(k)%long_name))
    call vatt(v_resp(k), 'units', trim(man%response(k)%units))
    call vatt(v_resp(k), 'cell_methods', 'time: mean')
    call nc(nf90_put_att(ncout, v_resp(k), 'missing_value', SPVAL), tmp_path, 'missing_value')
  end do
  call nc(nf90_enddef(ncout), tmp_path, 'cannot be written')
  if (have_latlon) then
    call nc(nf90_inq_varid(ncout, 'grid1d_lon', i), tmp_path, 'grid1d_lon')
    call nc(nf90_put_var(ncout, i, lon), tmp_path, 'grid1d_lon')
    call nc(nf90_inq_varid(ncout, 'grid1d_lat', i), tmp_path, 'grid1d_lat')
    call nc(nf90_put_var(ncout, i, lat), tmp_path, 'grid1d_lat')
  end if

  ! ---- the run: one coupling interval per call, the state carried by the component
  call system_clock(count_rate=rate)
  t_run = 0
  t_first = 0
  first_days = 0
  d0 = 0
  month = 0
  do while (d0 < n_t)
    if (interval_days > 0) then
      nd = min(interval_days, n_t - d0)
    else
      nd = min(MONTH_DAYS(mod(month, 12) + 1), n_t - d0)
      month = month + 1
    end if
    if (allocated(forcing)) deallocate(forcing, responses, slab)
    allocate(forcing(n_g, nd, size(man%forcing)), responses(n_g, nd, size(man%response)), slab(n_g, nd))
    do k = 1, size(man%forcing)
      call read_forcing(man%forcing(k), d0, nd, slab)
      forcing(:, :, k) = slab
    end do
    call system_clock(t0)
    call emu_land_run(land, forcing, responses, rc, msg)
    call system_clock(t1)
    t_run = t_run + (t1 - t0)
    if (land%intervals == 1) then
      t_first = t1 - t0
      first_days = nd
    end if
    if (rc /= 0) call fail(trim(input_path) // ': ' // trim(msg))
    call write_interval(d0, nd)
    d0 = d0 + nd
  end do

  call nc(nf90_close(ncout), tmp_path, 'cannot be closed')
  call nc(nf90_close(ncin), input_path, 'cannot be closed')
  if (c_rename(trim(tmp_path) // c_null_char, trim(output_path) // c_null_char) /= 0) then
    call fail(trim(output_path) // ': cannot be written (rename from its temporary failed)')
  end if
  tmp_made = .false.
  ! the first call includes TorchScript's warm-up (graph optimisation, kernel set-up): shown apart
  write(output_unit, '(a,i0,a,i0,a,i0,a,es10.3,a,es10.3,a,es10.3,a,i0,a)') 'esm_emu_land_driver: ', land%intervals, &
    ' intervals, ', n_t, ' days x ', n_g, ' gridcells; emulator ', seconds(t_run), ' s (', &
    real(n_g, real64) * real(n_t, real64) / max(seconds(t_run), 1.0e-9_real64), ' gridcell-days/s; first interval ', &
    seconds(t_first), ' s for ', first_days, ' days); wrote ' // trim(output_path)
  call emu_land_finalize(land)

contains

  real(real64) function seconds(ticks)
    integer(int64), intent(in) :: ticks
    seconds = real(ticks, real64) / real(rate, real64)
  end function seconds

  !> One line on stderr, the temporary output removed, exit status 2.
  subroutine fail(text)
    character(len=*), intent(in) :: text
    integer(c_int) :: ignored
    write(error_unit, '(a)') trim(text)
    flush(error_unit)
    if (tmp_made) then
      ios = nf90_close(ncout)
      ignored = c_remove(trim(tmp_path) // c_null_char)
    end if
    call c_exit(2_c_int)
  end subroutine fail

  subroutine nc(status, path, what)
    integer, intent(in) :: status
    character(len=*), intent(in) :: path, what
    if (status /= NF90_NOERR) call fail(trim(path) // ': ' // trim(what) // ' (' // trim(nf90_strerror(status)) // ')')
  end subroutine nc

  subroutine gatt(name, value)
    character(len=*), intent(in) :: name, value
    call nc(nf90_put_att(ncout, NF90_GLOBAL, name, value), tmp_path, name)
  end subroutine gatt

  subroutine vatt(varid, name, value)
    integer, intent(in) :: varid
    character(len=*), intent(in) :: name, value
    call nc(nf90_put_att(ncout, varid, name, value), tmp_path, name)
  end subroutine vatt

  function year4(y) result(s)
    integer, intent(in) :: y
    character(len=4) :: s
    write(s, '(i4.4)') y
  end function year4

  !> Whether two paths name the same existing file (through links and relative paths).
  logical function same_file(a, b)
    character(len=*), intent(in) :: a, b
    same_file = trim(a) == trim(b)
    if (.not. same_file) same_file = resolved(a) == resolved(b) .and. resolved(a) /= ''
  end function same_file

  function resolved(path) result(r)
    character(len=*), intent(in) :: path
    character(len=EMU_PATH_LEN) :: r
    character(kind=c_char, len=EMU_PATH_LEN + 1) :: buf
    integer :: n
    r = ''
    buf = ''
    if (.not. c_associated(c_realpath(trim(path) // c_null_char, buf))) return
    n = index(buf, c_null_char) - 1
    if (n > 0) r = buf(1:n)
  end function resolved

  !> `.NAME.HOST.PID.fortran0.tmp` beside `path` (the project's temporary-name form).
  function temporary_name(path) result(tmp)
    character(len=*), intent(in) :: path
    character(len=EMU_PATH_LEN) :: tmp
    character(kind=c_char, len=256) :: host
    character(len=24) :: pid
    integer :: k, j, n
    host = ''
    if (c_gethostname(host, int(len(host), c_size_t)) /= 0) host = 'host'
    n = index(host, c_null_char) - 1
    if (n < 0) n = len_trim(host)
    if (index(host(1:n), '.') > 0) n = index(host(1:n), '.') - 1
    if (n < 1) then
      host = 'host'
      n = 4
    end if
    do j = 1, n
      if (.not. (lle('a', host(j:j)) .and. lle(host(j:j), 'z') .or. lle('A', host(j:j)) .and. lle(host(j:j), 'Z') &
                 .or. lle('0', host(j:j)) .and. lle(host(j:j), '9') .or. host(j:j) == '-')) host(j:j) = '-'
    end do
    write(pid, '(i0)') c_getpid()
    k = index(trim(path), '/', back=.true.)
    tmp = path(1:k) // '.' // trim(path(k + 1:)) // '.' // host(1:min(n, 40)) // '.' // trim(pid) // '.fortran0.tmp'
  end function temporary_name

  !> The year of the input's "time: days since YYYY-..." (1 without a time variable).
  integer function read_start_year() result(y)
    character(len=256) :: units
    integer :: varid, status, dash
    y = 1
    if (nf90_inq_varid(ncin, 'time', varid) /= NF90_NOERR) return
    units = ''
    if (nf90_get_att(ncin, varid, 'units', units) /= NF90_NOERR) return
    dash = index(units(12:), '-')
    status = 1
    if (units(1:11) == 'days since ' .and. dash > 1) read(units(12:10 + dash), *, iostat=status) y
    if (status /= 0) call fail(trim(input_path) // ': time has units "' // trim(units) // &
                               '"; expected "days since YYYY-01-01 ..."')
  end function read_start_year

  !> The variable of `f` in the input, its dimension ids checked against `dims`, its units
  !> against the manifest's (where both are given).
  integer function input_var(f, what) result(varid)
    type(emu_field), intent(in) :: f
    character(len=*), intent(in) :: what
    character(len=EMU_UNITS_LEN) :: units
    integer :: status, alen
    if (nf90_inq_varid(ncin, trim(f%name), varid) /= NF90_NOERR) then
      call fail(trim(input_path) // ': variable ' // trim(f%name) // ' is missing (the emulator needs this ' // &
                trim(what) // ')')
    end if
    if (len_trim(f%units) > 0) then
      status = nf90_inquire_attribute(ncin, varid, 'units', len=alen)
      if (status == NF90_NOERR) then
        units = ''
        call nc(nf90_get_att(ncin, varid, 'units', units), input_path, trim(f%name) // ': units')
        if (trim(units) /= trim(f%units)) then
          call fail(trim(input_path) // ': ' // trim(f%name) // ' has units "' // trim(units) // &
                    '"; the emulator expects "' // trim(f%units) // '"')
        end if
      end if
    end if
  end function input_var

  !> Values equal to the variable's _FillValue or missing_value, or not finite, are refused.
  subroutine check_values(varid, f, values, where)
    integer, intent(in) :: varid
    type(emu_field), intent(in) :: f
    real(real32), intent(in) :: values(:)
    character(len=*), intent(in) :: where
    real(real32) :: fill
    integer :: j
    character(len=24) :: s
    do j = 1, size(values)
      if (.not. ieee_is_finite(values(j))) exit
    end do
    if (j > size(values) .and. nf90_get_att(ncin, varid, '_FillValue', fill) == NF90_NOERR) then
      do j = 1, size(values)
        if (values(j) == fill) exit
      end do
    end if
    if (j > size(values) .and. nf90_get_att(ncin, varid, 'missing_value', fill) == NF90_NOERR) then
      do j = 1, size(values)
        if (values(j) == fill) exit
      end do
    end if
    if (j <= size(values)) then
      write(s, '(i0)') j
      call fail(trim(input_path) // ': ' // trim(f%name) // ' is missing or not finite at gridcell ' // trim(s) // &
                trim(where))
    end if
  end subroutine check_values

  !> A (gridcell) field; parameters may also be one scalar for every gridcell.
  subroutine read_gridcell_field(f, scalar_ok, values)
    type(emu_field), intent(in) :: f
    logical, intent(in) :: scalar_ok
    real(real32), intent(out) :: values(:)
    integer :: varid, ndims, dimids(NF90_MAX_VAR_DIMS)
    real(real32) :: one
    varid = input_var(f, merge('parameter   ', 'static field', scalar_ok))
    call nc(nf90_inquire_variable(ncin, varid, ndims=ndims, dimids=dimids), input_path, trim(f%name))
    if (ndims == 0 .and. scalar_ok) then
      call nc(nf90_get_var(ncin, varid, one), input_path, trim(f%name) // ': cannot be read')
      values = one
    else if (ndims == 1 .and. dimids(1) == dim_g) then
      call nc(nf90_get_var(ncin, varid, values), input_path, trim(f%name) // ': cannot be read')
    else
      call fail(trim(input_path) // ': ' // trim(f%name) // ' must have dims (gridcell)' // &
                trim(merge(' or be a scalar', '               ', scalar_ok)))
    end if
    call check_values(varid, f, values, '')
  end subroutine read_gridcell_field

  subroutine check_forcing_var(f)
    type(emu_field), intent(in) :: f
    integer :: varid, ndims, dimids(NF90_MAX_VAR_DIMS)
    varid = input_var(f, 'forcing')
    call nc(nf90_inquire_variable(ncin, varid, ndims=ndims, dimids=dimids), input_path, trim(f%name))
    if (ndims /= 2 .or. dimids(1) /= dim_g .or. dimids(2) /= dim_t) then
      call fail(trim(input_path) // ': ' // trim(f%name) // ' must have dims (time, gridcell)')
    end if
  end subroutine check_forcing_var

  !> Days d0+1 .. d0+nd of a forcing variable as (gridcell, day).
  subroutine read_forcing(f, d0, nd, values)
    type(emu_field), intent(in) :: f
    integer, intent(in) :: d0, nd
    real(real32), intent(out) :: values(:,:)
    integer :: varid, d
    character(len=24) :: s
    call nc(nf90_inq_varid(ncin, trim(f%name), varid), input_path, trim(f%name))
    call nc(nf90_get_var(ncin, varid, values, start=[1, d0 + 1], count=[n_g, nd]), input_path, &
            trim(f%name) // ': cannot be read')
    do d = 1, nd
      write(s, '(i0)') d0 + d
      call check_values(varid, f, values(:, d), ', day ' // trim(s))
    end do
  end subroutine read_forcing

  !> The responses and time axis of days d0+1 .. d0+nd (CTSM stamps a daily mean at the day's end).
  subroutine write_interval(d0, nd)
    integer, intent(in) :: d0, nd
    integer :: d, doy, m, y, r
    if (allocated(tb)) deallocate(tb, mcdate)
    allocate(tb(2, nd), mcdate(nd))
    do d = 1, nd
      tb(1, d) = real(d0 + d - 1, real64)
      tb(2, d) = real(d0 + d, real64)
      y = start_year + (d0 + d) / 365
      doy = mod(d0 + d, 365)
      m = 1
      do while (doy >= MONTH_DAYS(m))
        doy = doy - MONTH_DAYS(m)
        m = m + 1
      end do
      mcdate(d) = y * 10000 + m * 100 + doy + 1
    end do
    call nc(nf90_put_var(ncout, v_time, tb(2, :), start=[d0 + 1], count=[nd]), tmp_path, 'time')
    call nc(nf90_put_var(ncout, v_bounds, tb, start=[1, d0 + 1], count=[2, nd]), tmp_path, 'time_bounds')
    call nc(nf90_put_var(ncout, v_mcdate, mcdate, start=[d0 + 1], count=[nd]), tmp_path, 'mcdate')
    call nc(nf90_put_var(ncout, v_mcsec, spread(0, 1, nd), start=[d0 + 1], count=[nd]), tmp_path, 'mcsec')
    do r = 1, size(man%response)
      call nc(nf90_put_var(ncout, v_resp(r), responses(:, :, r), start=[1, d0 + 1], count=[n_g, nd]), tmp_path, &
              trim(man%response(r)%name))
    end do
  end subroutine write_interval

end program esm_emu_land_driver
